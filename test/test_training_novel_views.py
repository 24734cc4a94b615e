"""Novel views from RGB-D frames, checked against the renderer at the new camera."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dsac_ros.data.seven_scenes import scene_coordinates_from_depth
from dsac_ros.data.synthetic import (
    SyntheticSceneConfig,
    generate_scene,
)
from dsac_ros.geometry.camera import cell_centers
from dsac_ros.geometry.transforms import invert_se3, perturb_poses, pose_errors
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNetConfig
from dsac_ros.training.config import Precision, TrainConfig
from dsac_ros.training.novel_views import NovelViewConfig, make_novel_views, render_views
from dsac_ros.training.runtime import setup_runtime
from dsac_ros.training.session import open_session


@pytest.fixture(scope='module')
def frames(room_frames):
    """The conftest frames with images as (B, 3, H, W)."""
    room, config, images, depth, T_cw = room_frames
    return room, config, images.permute(0, 3, 1, 2).contiguous(), depth, T_cw


def test_the_recorded_camera_gives_the_frame_back(frames):
    _, config, images, depth, T_cw = frames
    views = render_views(images, depth, T_cw, torch.from_numpy(config.K), T_cw)
    assert torch.equal(views.images_b3hw, images)
    assert float(views.hole_share_b.max()) == 0.0
    for b in range(len(images)):
        expected = scene_coordinates_from_depth(depth[b].numpy(), config.K,
                                                np.linalg.inv(T_cw[b].numpy()))
        np.testing.assert_allclose(views.coords_b3hw[b].numpy(), expected, atol=1e-5)


def test_a_moved_camera_sees_what_the_renderer_draws_there(frames):
    """Moved and turned 1.5-25 cm / deg (pose changes of magnitude 5-25): the colour where the
    source saw the scene, and the targets of the cells, agree with a rendering at the new pose;
    the targets reproject onto their cell centres."""
    room, config, images, depth, T_cw = frames
    K = torch.from_numpy(config.K)
    T_new = perturb_poses(T_cw, torch.Generator().manual_seed(2), 5.0, 25.0)
    views = render_views(images, depth, T_cw, K, T_new)
    h, w = views.coords_b3hw.shape[-2:]
    centres = cell_centers(h, w, 8, dtype=torch.float64).reshape(2, -1)
    for b in range(len(images)):
        T_wc = invert_se3(T_new[b]).numpy()
        colour, true_depth = room.render_frame(T_wc, config.K, config.width, config.height)
        seen = torch.isfinite(views.depth_bhw[b]).numpy()
        assert 0.3 < seen.mean() < 1.0
        diff = np.abs(views.images_b3hw[b].permute(1, 2, 0).numpy().astype(np.float64)
                      - colour.astype(np.float64))[seen]
        assert np.median(diff) < 6.0, np.median(diff)
        truth = scene_coordinates_from_depth(true_depth, config.K, T_wc)
        target = views.coords_b3hw[b].numpy()
        both = np.isfinite(target).all(axis=0) & np.isfinite(truth).all(axis=0)
        error = np.linalg.norm(target - truth, axis=0)[both]
        assert both.mean() > 0.3
        assert np.median(error) < 0.005 and np.quantile(error, 0.95) < 0.03, (
            np.median(error), np.quantile(error, 0.95))
        points = views.coords_b3hw[b].double().reshape(3, -1)
        valid = torch.isfinite(points).all(dim=0)
        pix = K @ (T_new[b, :3, :3] @ points[:, valid] + T_new[b, :3, 3:])
        assert float((pix[:2] / pix[2:] - centres[:, valid]).norm(dim=0).max()) < 1e-4


def test_views_are_drawn_within_range_and_repeat(frames):
    _, config, images, depth, T_cw = frames
    cfg = NovelViewConfig(copies=2, min_magnitude=5.0, max_magnitude=25.0, max_hole_share=0.3)
    K = torch.from_numpy(config.K)
    views, T_new, source = make_novel_views(images, depth, T_cw, K, cfg,
                                            torch.Generator().manual_seed(0))
    again, T_again, _ = make_novel_views(images, depth, T_cw, K, cfg,
                                         torch.Generator().manual_seed(0))
    assert torch.equal(views.images_b3hw, again.images_b3hw) and torch.equal(T_new, T_again)
    assert 0 < len(source) <= 2 * len(images)
    assert float(views.hole_share_b.max()) <= 0.3
    angle_deg, shift_m = pose_errors(T_new, T_cw[source])
    assert float(angle_deg.min()) >= 1.5 - 1e-6 and float(angle_deg.max()) <= 25.0 + 1e-6
    assert float(shift_m.min()) >= 0.015 - 1e-6 and float(shift_m.max()) <= 0.25 + 1e-6
    with pytest.raises(ValueError):
        NovelViewConfig(copies=-1)


def test_a_training_session_trains_on_the_views_of_its_training_frames_only(tmp_path: Path):
    """The views join the training shard (named after their source frame), the validation
    frames get none, and a second session of the run (a resume) makes the same views."""
    scene = tmp_path / 'scene'
    generate_scene(scene, SyntheticSceneConfig(width=80, height=64, fx=65.0, fy=65.0,
                                               train_frames=20, test_frames=2))
    config = TrainConfig(scene=scene, out_dir=tmp_path / 'run', progress_bar=False,
                         precision=Precision.FP32, threads=1, validation_fraction=0.2,
                         coord_net=SceneCoordinateNetConfig.small(),
                         novel_views=NovelViewConfig(copies=2, max_hole_share=0.5))
    runtime = setup_runtime('cpu', Precision.FP32)
    plain = open_session(replace(config, novel_views=NovelViewConfig()), runtime)
    session = open_session(config, runtime)
    recorded = len(plain.data)
    assert torch.equal(session.validation, plain.validation)
    assert torch.equal(session.shard[:len(plain.shard)], plain.shard)
    novel = session.shard[len(plain.shard):]
    assert 0.5 * 2 * len(plain.shard) <= len(novel) <= 2 * len(plain.shard)
    assert torch.equal(novel, torch.arange(recorded, len(session.data)))
    validation_names = {plain.data.names[i] for i in plain.validation.tolist()}
    for i in novel.tolist():
        source = session.data.names[i].split('/', 1)[1].rsplit('/', 1)[0]
        assert source in plain.data.names and source not in validation_names
    again = open_session(config, runtime)
    assert torch.equal(again.data.images_b3hw, session.data.images_b3hw)


def test_dsac_train_sets_the_number_and_reach_of_the_views(tmp_path: Path):
    """One view per frame within 25 cm / 25 deg by default; --novel-views and
    --novel-view-magnitude change them, the paper preset has none."""
    from dsac_ros.cli.train import build_parser, config_from_args
    base = ['--scene', str(tmp_path), '--out', str(tmp_path / 'out')]
    parse = build_parser().parse_args
    default = config_from_args(parse(base), tmp_path).novel_views
    assert (default.copies, default.max_magnitude) == (1, 25.0)
    wider = config_from_args(parse(base + ['--novel-views', '2', '--novel-view-magnitude', '40']),
                             tmp_path).novel_views
    assert (wider.copies, wider.max_magnitude) == (2, 40.0)
    assert config_from_args(parse(base + ['--preset', 'paper']), tmp_path).novel_views.copies == 0
    with pytest.raises(ValueError, match='min_magnitude'):
        config_from_args(parse(base + ['--novel-view-magnitude', '2']), tmp_path)
