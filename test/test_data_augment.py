"""Augmentation keeps image, intrinsics, pose and scene-coordinate target consistent: checked
against the renderer (the warped image equals a rendering from the augmented camera) and by
projecting the resampled targets with OpenCV."""

import cv2
import numpy as np
import pytest

from dsac_ros.data.augment import AugmentConfig, AugmentParams, apply_augmentation, augment
from dsac_ros.data.seven_scenes import scene_coordinates_from_depth
from dsac_ros.data.synthetic import SyntheticRoom, SyntheticSceneConfig, trajectories

CFG = SyntheticSceneConfig(seed=1, width=160, height=120, fx=130.0, fy=130.0,
                           train_frames=30, test_frames=3)


@pytest.fixture(scope='module')
def sample():
    room = SyntheticRoom(CFG.seed)
    T_wc = trajectories(CFG)[0][0][4]
    rgb, depth = room.render_frame(T_wc, CFG.K, CFG.width, CFG.height)
    return room, rgb, scene_coordinates_from_depth(depth, CFG.K, T_wc), T_wc


def test_identity_is_identity(sample):
    _, rgb, coords, T_wc = sample
    out = apply_augmentation(rgb, coords, CFG.K, T_wc, AugmentParams())
    np.testing.assert_array_equal(out.image_rgb, rgb)
    np.testing.assert_array_equal(out.scene_coords_3hw, coords)
    np.testing.assert_allclose(out.K, CFG.K)
    np.testing.assert_allclose(out.T_wc, T_wc)


@pytest.mark.parametrize('angle_deg, scale', [(6.0, 1.0), (-4.0, 1.12), (0.0, 0.9)])
def test_warp_matches_rendering_from_augmented_camera(sample, angle_deg, scale):
    room, rgb, coords, T_wc = sample
    params = AugmentParams(angle_rad=np.radians(angle_deg), scale=scale)
    out = apply_augmentation(rgb, coords, CFG.K, T_wc, params)
    rendered, _ = room.render_frame(out.T_wc, out.K, CFG.width, CFG.height)
    # Compare away from the border (black fill where the input had no pixels).
    inner = np.s_[20:-20, 25:-25]
    diff = np.abs(out.image_rgb[inner].astype(float) - rendered[inner].astype(float)).mean()
    unwarped = np.abs(rgb[inner].astype(float) - rendered[inner].astype(float)).mean()
    # Resampling a high-frequency texture twice costs ~12 grey levels; a wrong warp ~50.
    assert diff < 16.0 and diff < 0.4 * unwarped
    # Targets projected with the augmented camera land near their cell centres (nearest-cell
    # resampling: within half a cell diagonal times the scale).
    valid = np.isfinite(out.scene_coords_3hw).all(axis=0)
    assert valid.mean() > 0.7
    T_cw = np.linalg.inv(out.T_wc)
    rvec, _ = cv2.Rodrigues(T_cw[:3, :3])
    points = out.scene_coords_3hw[:, valid].T.astype(np.float64)
    pix, _ = cv2.projectPoints(points, rvec, T_cw[:3, 3], out.K, None)
    ii, jj = np.nonzero(valid)
    centres = np.stack([8 * jj + 4, 8 * ii + 4], 1)
    err = np.linalg.norm(pix.reshape(-1, 2) - centres, axis=1)
    assert err.max() < 4 * np.sqrt(2) * scale + 0.5


def test_nan_kept_and_outside_is_nan(sample):
    _, rgb, coords, T_wc = sample
    coords = coords.copy()
    coords[:, 7, 10] = np.nan
    out = apply_augmentation(rgb, coords, CFG.K, T_wc, AugmentParams(angle_rad=0.0, scale=1.0,
                                                                     brightness=0.05))
    assert np.isnan(out.scene_coords_3hw[:, 7, 10]).all()
    zoom_out = apply_augmentation(rgb, coords, CFG.K, T_wc, AugmentParams(scale=0.8))
    assert np.isnan(zoom_out.scene_coords_3hw[:, 0, 0]).all()   # corner maps outside
    assert np.isfinite(zoom_out.scene_coords_3hw[:, 7, 9]).all()  # centre stays


def test_seeded_and_photometric(sample):
    _, rgb, coords, T_wc = sample
    cfg = AugmentConfig(brightness=0.2, contrast=0.3, max_rotation_deg=8, max_scale=0.15)
    a = augment(rgb, coords, CFG.K, T_wc, np.random.default_rng(7), cfg)
    b = augment(rgb, coords, CFG.K, T_wc, np.random.default_rng(7), cfg)
    c = augment(rgb, coords, CFG.K, T_wc, np.random.default_rng(8), cfg)
    np.testing.assert_array_equal(a.image_rgb, b.image_rgb)
    np.testing.assert_array_equal(a.scene_coords_3hw, b.scene_coords_3hw)
    assert not np.array_equal(a.image_rgb, c.image_rgb)
    bright = apply_augmentation(rgb, coords, CFG.K, T_wc, AugmentParams(brightness=0.1))
    delta = bright.image_rgb.astype(int) - rgb.astype(int)
    unclipped = rgb < 200
    assert np.all(np.abs(delta[unclipped] - 26) <= 1)
    with pytest.raises(ValueError, match='target shape'):
        apply_augmentation(rgb, coords[:, :-1], CFG.K, T_wc, AugmentParams())
    with pytest.raises(ValueError, match='contrast'):
        AugmentConfig(contrast=1.5)
