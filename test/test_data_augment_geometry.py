"""Augmentation geometry (complements test_data_augment.py): every kept target reprojects
(OpenCV projectPoints) through the adjusted K / pose to within the nearest-cell bound of its
warped cell centre, equals the input target of the cell the inverse affine picks, and exactly
the cells without a source are NaN; the warped image matches a render of the adjusted camera
better than a render of the unrotated one. Non-square pixels and an off-centre principal
point are used on purpose."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from dsac_ros.data.augment import AugmentConfig, AugmentParams, apply_augmentation, sample_params
from dsac_ros.data.seven_scenes import scene_coordinates_from_depth
from dsac_ros.data.synthetic import SyntheticRoom, SyntheticSceneConfig, trajectories

CONFIG = SyntheticSceneConfig(seed=4, width=160, height=120, fx=130.0, fy=120.0, cx=78.0,
                              cy=61.0, train_frames=3, test_frames=1)


@pytest.fixture(scope='module')
def sample():
    room = SyntheticRoom(CONFIG.seed, CONFIG.room_size_m)
    T_wc = trajectories(CONFIG)[0][0][0]
    rgb, depth = room.render_frame(T_wc, CONFIG.K, CONFIG.width, CONFIG.height)
    target = scene_coordinates_from_depth(depth, CONFIG.K, T_wc)
    return room, rgb, target, T_wc


def _project(points_n3: np.ndarray, K: np.ndarray, T_wc: np.ndarray) -> np.ndarray:
    T_cw = np.linalg.inv(T_wc)
    rvec, _ = cv2.Rodrigues(T_cw[:3, :3])
    uv, _ = cv2.projectPoints(points_n3.astype(np.float64), rvec, T_cw[:3, 3], K, None)
    return uv.reshape(-1, 2)


@pytest.mark.parametrize('angle_deg,scale', [(8.0, 1.1), (-12.0, 0.85), (0.0, 1.0)])
def test_target_reprojects_to_warped_cells(sample, angle_deg: float, scale: float) -> None:
    _, rgb, target, T_wc = sample
    params = AugmentParams(angle_rad=math.radians(angle_deg), scale=scale)
    out = apply_augmentation(rgb, target, CONFIG.K, T_wc, params)
    assert out.scene_coords_3hw.shape == target.shape
    h, w = target.shape[1:]
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    centres = np.stack([8 * jj + 4, 8 * ii + 4], -1).reshape(-1, 2).astype(np.float64)
    points = out.scene_coords_3hw.reshape(3, -1).T
    valid = np.isfinite(points).all(1)
    assert valid.mean() > 0.6
    uv = _project(points[valid], out.K, out.T_wc)
    # Nearest-cell resampling: within half a source-cell diagonal, scaled.
    err = np.linalg.norm(uv - centres[valid], axis=1)
    assert err.max() <= scale * 4 * math.sqrt(2) + 1e-6
    if angle_deg == 0 and scale == 1:
        assert err.max() < 1e-3
    # Each kept target is the input target at the cell the inverse affine maps back to.
    src = np.c_[centres, np.ones(len(centres))] @ cv2.invertAffineTransform(out.affine_23).T
    ij = np.rint((src - 4) / 8).astype(int)
    outside = (ij < 0).any(1) | (ij[:, 0] >= w) | (ij[:, 1] >= h)
    np.testing.assert_array_equal(~valid, outside)  # the rendered input has no NaN
    np.testing.assert_array_equal(points[valid], target[:, ij[valid, 1], ij[valid, 0]].T)
    if scale < 1:  # zooming out leaves border cells without a source
        assert outside.any()


def test_warped_image_matches_render_of_adjusted_camera(sample) -> None:
    room, rgb, target, T_wc = sample
    out = apply_augmentation(rgb, target, CONFIG.K, T_wc,
                             AugmentParams(angle_rad=math.radians(10), scale=1.15))
    rendered, _ = room.render_frame(out.T_wc, out.K, CONFIG.width, CONFIG.height)
    inside = cv2.warpAffine(np.full(rgb.shape[:2], 255, np.uint8), out.affine_23,
                            (CONFIG.width, CONFIG.height)) == 255
    inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)

    # Compare after a small blur: the texture has detail at the pixel scale, and resampling
    # it twice (renderer, then warp) differs per pixel by several grey levels.
    def blurred(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (0, 0), 1.5).astype(int)

    diff = np.abs(blurred(out.image_rgb) - blurred(rendered))[inside]
    wrong, _ = room.render_frame(T_wc, out.K, CONFIG.width, CONFIG.height)  # unrotated
    wrong_diff = np.abs(blurred(out.image_rgb) - blurred(wrong))[inside]
    assert np.median(diff) <= 4 and diff.mean() < 0.15 * wrong_diff.mean()


def test_sampled_ranges() -> None:
    config = AugmentConfig(brightness=0.2, contrast=0.3, max_rotation_deg=5, max_scale=0.1)
    draws = [sample_params(np.random.default_rng(s), config) for s in range(200)]
    assert max(abs(p.angle_rad) for p in draws) <= math.radians(5)
    assert max(abs(p.angle_rad) for p in draws) > math.radians(4)
    assert all(0.9 <= p.scale <= 1.1 and 0.7 <= p.contrast <= 1.3 for p in draws)
    assert all(abs(p.brightness) <= 0.2 for p in draws)
    with pytest.raises(ValueError, match='>= 0'):
        AugmentConfig(brightness=-0.1)
