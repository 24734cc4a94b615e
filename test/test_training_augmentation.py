"""Batched augmentation: exact targets and a real camera change, checked against the renderer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dsac_ros.data.seven_scenes import scene_coordinates_from_depth
from dsac_ros.geometry.camera import cell_centers
from dsac_ros.training.augmentation import AugmentationConfig, augment_batch, crop_batch

GEOMETRIC = replace(AugmentationConfig.none(), max_rotation_deg=30.0, min_scale=2 / 3,
                    max_scale=1.5)


@pytest.fixture(scope='module')
def frames(room_frames):
    return room_frames


def test_none_is_identity(frames):
    _, config, images, depth, T_cw = frames
    K = torch.from_numpy(config.K)
    batch = augment_batch(images, T_cw, K, torch.Generator().manual_seed(0),
                          AugmentationConfig.none(), depth)
    assert torch.equal((batch.images_b3hw * 255).round().byte(), images.permute(0, 3, 1, 2))
    for b in range(len(images)):
        expected = scene_coordinates_from_depth(depth[b].numpy(), config.K,
                                                np.linalg.inv(T_cw[b].numpy()))
        np.testing.assert_allclose(batch.coords_b3hw[b].numpy(), expected, atol=1e-5)
    torch.testing.assert_close(batch.T_cw_b44, T_cw)


def test_targets_reproject_to_their_cells(frames):
    """World targets seen by the augmented camera land on their cell centres (within the
    half-pixel rounding of the source pixel, scaled by the zoom)."""
    _, config, images, depth, T_cw = frames
    batch = augment_batch(images, T_cw, torch.from_numpy(config.K),
                          torch.Generator().manual_seed(3), GEOMETRIC, depth)
    h, w = batch.coords_b3hw.shape[-2:]
    centres = cell_centers(h, w, 8, dtype=torch.float64).reshape(2, -1)
    scale = batch.K_b33[:, 0, 0] / config.K[0, 0]
    for b in range(len(images)):
        points = batch.coords_b3hw[b].double().reshape(3, -1)
        valid = torch.isfinite(points).all(dim=0)
        assert valid.float().mean() > 0.5
        cam = batch.T_cw_b44[b, :3, :3] @ points[:, valid] + batch.T_cw_b44[b, :3, 3:]
        pix = batch.K_b33[b] @ cam
        pix = pix[:2] / pix[2:]
        error = (pix - centres[:, valid]).norm(dim=0)
        assert float(error.max()) < 0.75 * float(scale[b]) + 1e-6


def test_image_is_the_augmented_camera_view(frames):
    """The warped image equals a rendering with the augmented camera (bilinear resampling
    aside) where the source image covers it."""
    room, config, images, depth, T_cw = frames
    batch = augment_batch(images, T_cw, torch.from_numpy(config.K),
                          torch.Generator().manual_seed(5), GEOMETRIC, depth)
    for b in range(len(images)):
        T_wc = np.linalg.inv(batch.T_cw_b44[b].numpy())
        rendered, _ = room.render_frame(T_wc, batch.K_b33[b].numpy(), config.width,
                                        config.height)
        warped = (batch.images_b3hw[b].permute(1, 2, 0).numpy() * 255.0)
        covered = warped.sum(axis=2) > 0
        diff = np.abs(warped - rendered.astype(np.float64))[covered]
        assert covered.mean() > 0.5
        assert np.median(diff) < 6.0, np.median(diff)


def test_photometric_draws_stay_in_range_and_repeat(frames):
    _, config, images, depth, T_cw = frames
    config_aug = AugmentationConfig()
    a = augment_batch(images, T_cw, torch.from_numpy(config.K),
                      torch.Generator().manual_seed(9), config_aug, depth)
    b = augment_batch(images, T_cw, torch.from_numpy(config.K),
                      torch.Generator().manual_seed(9), config_aug, depth)
    assert torch.equal(a.images_b3hw, b.images_b3hw)
    assert float(a.images_b3hw.min()) >= 0.0 and float(a.images_b3hw.max()) <= 1.0
    with pytest.raises(ValueError):
        AugmentationConfig(min_scale=2.0, max_scale=1.0)


def test_crop_is_the_view_of_a_smaller_camera(frames):
    """A crop (after the roll and zoom) is what a camera with the crop's size and the shifted
    principal point sees: the renderer draws the same image, and the targets reproject to the
    crop's own cell centres."""
    room, config, images, depth, T_cw = frames
    generator = torch.Generator().manual_seed(7)
    full = augment_batch(images, T_cw, torch.from_numpy(config.K), generator, GEOMETRIC, depth)
    crop = crop_batch(full, (64, 96), generator)
    assert crop.images_b3hw.shape[-2:] == (64, 96) and crop.coords_b3hw.shape[-2:] == (8, 12)
    centres = cell_centers(8, 12, 8, dtype=torch.float64).reshape(2, -1)
    shifts = set()
    for b in range(len(images)):
        shifts.add(tuple(crop.K_b33[b, :2, 2].tolist()))
        T_wc = np.linalg.inv(crop.T_cw_b44[b].numpy())
        rendered, _ = room.render_frame(T_wc, crop.K_b33[b].numpy(), 96, 64)
        cut = crop.images_b3hw[b].permute(1, 2, 0).numpy() * 255.0
        covered = cut.sum(axis=2) > 0
        assert np.median(np.abs(cut - rendered.astype(np.float64))[covered]) < 6.0
        points = crop.coords_b3hw[b].double().reshape(3, -1)
        valid = torch.isfinite(points).all(dim=0)
        pix = crop.K_b33[b] @ (crop.T_cw_b44[b, :3, :3] @ points[:, valid]
                               + crop.T_cw_b44[b, :3, 3:])
        scale = float(crop.K_b33[b, 0, 0]) / config.K[0, 0]
        error = (pix[:2] / pix[2:] - centres[:, valid]).norm(dim=0)
        assert float(error.max()) < 0.75 * scale + 1e-6
    assert len(shifts) > 1  # each image its own window
    with pytest.raises(ValueError, match='multiple of 8'):
        crop_batch(full, (60, 96), generator)
    assert crop_batch(full, tuple(full.images_b3hw.shape[-2:]), generator) is full


def test_stage_one_augments_on_request(tmp_path):
    """dsac_train's stage 1 jitters exposure only by default; --augment gives it the exact
    camera augmentation (DSAC*'s ranges)."""
    from dsac_ros.cli.train import build_parser, config_from_args
    base = ['--scene', str(tmp_path), '--out', str(tmp_path / 'out')]
    plain = config_from_args(build_parser().parse_args(base), tmp_path)
    assert plain.coords.augmentation == AugmentationConfig.exposure_jitter()
    assert not plain.coords.augmentation.geometric
    augmented = config_from_args(build_parser().parse_args(base + ['--augment']), tmp_path)
    assert augmented.coords.augmentation == AugmentationConfig()
    assert augmented.coords.augmentation.geometric


def test_crop_option(tmp_path):
    """Stage 1 trains on windows of 0.6 of each side by default (rounded down to the stride);
    dsac_train --crop-fraction changes it, 1 is whole frames, as in the paper preset."""
    from dsac_ros.cli.train import build_parser, config_from_args
    from dsac_ros.training.config import CoordStageConfig, preset_config
    base = ['--scene', str(tmp_path), '--out', str(tmp_path / 'out')]
    parse = build_parser().parse_args
    default = config_from_args(parse(base), tmp_path).coords
    assert default.crop_size((240, 320), 8) == (144, 192)
    assert default.crop_size((480, 640), 8) == (288, 384)
    whole = config_from_args(parse(base + ['--crop-fraction', '1']), tmp_path).coords
    assert whole.crop_size((240, 320), 8) == (240, 320)
    assert preset_config('paper', tmp_path, tmp_path).coords.crop_fraction == 1.0
    assert CoordStageConfig(crop_fraction=0.01).crop_size((240, 320), 8) == (8, 8)
    with pytest.raises(ValueError, match='crop_fraction'):
        CoordStageConfig(crop_fraction=0.0)
    # A prefix is not taken for the option (argparse would read `--crop` as it silently).
    with pytest.raises(SystemExit):
        parse(base + ['--crop', '0.5'])
