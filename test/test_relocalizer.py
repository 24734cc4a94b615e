"""Relocalizer: pipeline glue (resize, K scaling, estimator, numpy outputs) on a synthetic scene.

Accuracy is proven with an oracle network that returns the exact ground-truth scene coordinates
of the frame it is shown (looked up by image similarity), so any error comes from the glue.
The real network path is checked for shapes, timings and determinism; poses are compared with
OpenCV's solvePnP as the independent reference.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dsac_ros.data.seven_scenes import SceneDataset, scene_coordinates_from_depth
from dsac_ros.data.synthetic import SyntheticRoom, SyntheticSceneConfig, generate_scene
from dsac_ros.dsac import (
    EstimatorConfig,
    ModelSettings,
    PoseMode,
    Selection,
    model_settings_metadata,
)
from dsac_ros.geometry.camera import scale_intrinsics, scale_intrinsics_np
from dsac_ros.geometry.transforms import pose_errors
from dsac_ros.models.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet, SceneCoordinateNetConfig
from dsac_ros.models.score_net import ScoreNet
from dsac_ros.relocalizer import Localization, Relocalizer, RelocalizerConfig

SCENE = SyntheticSceneConfig(seed=3, width=160, height=120, fx=130.0, fy=130.0, cx=79.0,
                             cy=61.5, train_frames=3, test_frames=3)
FAST = EstimatorConfig(num_hypotheses=64)


class OracleNet(nn.Module):
    """Returns the ground-truth scene coordinates of the stored frame most similar to the input.

    images_n3hw: training-size images (float in [0, 1]); coords_n3hw: their GT maps (stride 8).
    The input must be at the training size (it is what the relocalizer must feed the net).
    """

    stride = 8

    def __init__(self, images_n3hw: torch.Tensor, coords_n3hw: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer('images', images_n3hw)
        self.register_buffer('coords', coords_n3hw)
        self.calls = 0

    def forward(self, image_b3hw: torch.Tensor) -> torch.Tensor:
        assert image_b3hw.shape[1:] == self.images.shape[1:], image_b3hw.shape
        self.calls += 1
        diff = (image_b3hw.float()[:, None] - self.images[None]).abs().mean(dim=(2, 3, 4))
        return self.coords[diff.argmin(dim=1)]


@pytest.fixture(scope='module')
def scene(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp('reloc') / 'scene', SCENE)


@pytest.fixture(scope='module')
def frames(scene):
    return [SceneDataset(scene, 'test')[i] for i in range(3)]


def oracle_relocalizer(frames, config: RelocalizerConfig | None = None) -> Relocalizer:
    images = torch.stack([torch.from_numpy(f.image_rgb).permute(2, 0, 1).float() / 255.0
                          for f in frames])
    coords = torch.stack([torch.from_numpy(scene_coordinates_from_depth(
        f.depth_m, f.K_depth, f.T_wc)) for f in frames])
    ckpt = Checkpoint(coord_net=OracleNet(images, coords), score_net=None,
                      K=torch.from_numpy(SCENE.K), image_size=(SCENE.height, SCENE.width))
    return Relocalizer(ckpt, config or RelocalizerConfig(device='cpu', estimator=FAST))


def tiny_checkpoint(path: Path, score_net: ScoreNet | None = None) -> Path:
    torch.manual_seed(0)
    net = SceneCoordinateNet(SceneCoordinateNetConfig(stem_widths=(8, 16, 16), num_blocks=1,
                                                      dilations=(1,), head_width=16))
    net.set_scene_mean(torch.tensor([3.0, 2.5, 1.5]))
    # Spread the initial predictions over metres so the estimator gets non-degenerate input.
    with torch.no_grad():
        net.head[-1].weight.normal_(std=0.5)
    return save_checkpoint(path, net, score_net, torch.from_numpy(SCENE.K),
                           (SCENE.height, SCENE.width))


def errors(T_cw_est: np.ndarray, T_wc_gt: np.ndarray) -> tuple[float, float]:
    deg, m = pose_errors(torch.from_numpy(np.array(T_cw_est)),
                         torch.from_numpy(np.linalg.inv(T_wc_gt)))
    return float(deg), float(m)


@pytest.mark.parametrize('selection', list(Selection))
def test_oracle_pose_is_exact(frames, selection):
    config = RelocalizerConfig(device='cpu', estimator=EstimatorConfig(
        num_hypotheses=64, selection=selection))
    reloc = oracle_relocalizer(frames, config)
    for frame in frames:
        loc = reloc.localize(frame.image_rgb, frame.K)
        assert isinstance(loc, Localization) and loc.valid
        deg, m = errors(loc.T_cw, frame.T_wc)
        assert m < 0.01 and deg < 0.5, (frame.name, deg, m)
        assert loc.T_wc.dtype == np.float64 and loc.T_wc.shape == (4, 4)
        np.testing.assert_allclose(loc.T_wc @ loc.T_cw, np.eye(4), atol=1e-9)
        assert loc.inlier_ratio > 0.9 and loc.inlier_count > 100
        assert loc.covariance.shape == (6, 6)
        assert np.all(np.linalg.eigvalsh(loc.covariance) > 0)
        assert set(loc.timings) == {'preprocess', 'network', 'estimator'}
        with pytest.raises(ValueError):
            loc.T_wc[0, 0] = 2.0  # read-only outputs


def test_oracle_matches_opencv_pnp(frames):
    """Independent reference: OpenCV solvePnP on the same GT correspondences."""
    frame = frames[1]
    coords = scene_coordinates_from_depth(frame.depth_m, frame.K_depth, frame.T_wc)
    h, w = coords.shape[1:]
    u, v = np.meshgrid(8 * np.arange(w) + 4, 8 * np.arange(h) + 4)
    pts = coords.reshape(3, -1).T.astype(np.float64)
    px = np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)
    ok = np.isfinite(pts).all(1)
    _, rvec, tvec = cv2.solvePnP(pts[ok], px[ok], frame.K, None, flags=cv2.SOLVEPNP_ITERATIVE)
    T_cw_cv = np.eye(4)
    T_cw_cv[:3, :3] = cv2.Rodrigues(rvec)[0]
    T_cw_cv[:3, 3] = tvec.ravel()
    loc = oracle_relocalizer(frames).localize(frame.image_rgb, frame.K)
    deg, m = pose_errors(torch.from_numpy(np.array(loc.T_cw)), torch.from_numpy(T_cw_cv))
    assert float(m) < 0.005 and float(deg) < 0.2


def test_input_twice_the_training_size_scales_K(frames):
    """A 2x image rendered with 2x intrinsics is shrunk (INTER_AREA) and K scaled back."""
    frame = frames[2]
    K2 = scale_intrinsics(torch.from_numpy(frame.K), 2.0, 2.0).numpy()
    np.testing.assert_allclose(scale_intrinsics_np(frame.K, 2.0, 2.0), K2)
    room = SyntheticRoom(SCENE.seed, SCENE.room_size_m)
    big, _ = room.render_frame(frame.T_wc, K2, 2 * SCENE.width, 2 * SCENE.height)
    reloc = oracle_relocalizer(frames)
    pred = reloc.predict([big], [K2])
    np.testing.assert_allclose(pred.K_b33[0].cpu().numpy(), frame.K, atol=1e-9)
    loc = reloc.localize(big, K2)
    deg, m = errors(loc.T_cw, frame.T_wc)
    assert loc.valid and m < 0.01 and deg < 0.5, (deg, m)
    # Wrong K for the 2x image (the 1x K, i.e. half the focal length) gives a wrong pose.
    bad = reloc.localize(big, frame.K)
    deg_bad, m_bad = errors(bad.T_cw, frame.T_wc)
    assert not bad.valid or m_bad > 0.05 or deg_bad > 2.0
    # K None: the model's training camera (scaled to the resized image = training K).
    loc_none = reloc.localize(big, None)
    deg, m = errors(loc_none.T_cw, frame.T_wc)
    assert m < 0.01 and deg < 0.5


def test_localize_batch_matches_single(frames):
    reloc = oracle_relocalizer(frames)
    locs = reloc.localize_batch([f.image_rgb for f in frames], [f.K for f in frames])
    assert len(locs) == len(frames)
    for loc, frame in zip(locs, frames):
        deg, m = errors(loc.T_cw, frame.T_wc)
        assert loc.valid and m < 0.01 and deg < 0.5


def test_prediction_reused_across_selections(frames):
    reloc = oracle_relocalizer(frames)
    pred = reloc.predict([frames[0].image_rgb], [frames[0].K])
    calls = reloc.coord_net.calls
    for selection in Selection:
        (loc,) = reloc.estimate(pred, selection)
        assert errors(loc.T_cw, frames[0].T_wc)[1] < 0.01
    assert reloc.coord_net.calls == calls


def test_real_network_shapes_timings_determinism(tmp_path, frames):
    path = tiny_checkpoint(tmp_path / 'tiny.pt')
    reloc = Relocalizer.from_checkpoint(path, RelocalizerConfig(device='auto', estimator=FAST))
    assert reloc.device.type == ('cuda' if torch.cuda.is_available() else 'cpu')
    image = frames[0].image_rgb
    a = reloc.localize(image, frames[0].K)
    b = reloc.localize(image, frames[0].K)
    np.testing.assert_array_equal(a.T_wc, b.T_wc)
    assert a.valid == b.valid and a.inlier_count == b.inlier_count
    assert a.score_entropy == b.score_entropy
    assert a.T_cw.shape == (4, 4) and a.covariance.shape == (6, 6)
    assert np.isfinite(a.T_wc).all() and np.isfinite(a.covariance).all()
    assert 0.0 <= a.inlier_ratio <= 1.0 and a.score_entropy >= 0.0
    assert all(v >= 0.0 for v in a.timings.values())
    if not a.valid:
        np.testing.assert_array_equal(a.T_wc, np.eye(4))
    pred = reloc.predict([image, cv2.resize(image, (320, 240))])
    assert tuple(pred.scene_coords_b3hw.shape) == (2, 3, SCENE.height // 8, SCENE.width // 8)
    # Estimator swap (the ROS node's parameter callback) takes effect.
    reloc.set_estimator_config(EstimatorConfig(num_hypotheses=8, selection='dsac'))
    assert reloc.estimator_config.selection is Selection.DSAC
    reloc.localize(image)


def test_cuda_request_without_cuda_falls_back(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    path = tiny_checkpoint(tmp_path / 'tiny.pt')
    with caplog.at_level('WARNING', logger='dsac_ros.relocalizer'):
        reloc = Relocalizer.from_checkpoint(path, RelocalizerConfig(device='cuda'))
    assert reloc.device.type == 'cpu'
    assert 'CUDA is not available' in caplog.text


@pytest.mark.parametrize('image, K, match', [
    (np.zeros((120, 160, 3), np.float32), None, 'uint8'),
    (np.zeros((120, 160), np.uint8), None, 'shape'),
    (np.zeros((120, 160, 4), np.uint8), None, 'shape'),
    (np.zeros((0, 160, 3), np.uint8), None, 'empty'),
    ([[1, 2, 3]], None, 'numpy'),
    (np.zeros((120, 160, 3), np.uint8), np.full((3, 3), np.nan), 'NaN'),
    (np.zeros((120, 160, 3), np.uint8), np.diag([0.0, 130.0, 1.0]), 'focal'),
    (np.zeros((120, 160, 3), np.uint8), np.eye(2), 'shape'),
])
def test_bad_input_raises(frames, image, K, match):
    with pytest.raises(ValueError, match=match):
        oracle_relocalizer(frames).localize(image, K)


def test_bad_config_raises():
    with pytest.raises(ValueError, match='device'):
        RelocalizerConfig(device='tpu')
    with pytest.raises(ValueError, match='precision'):
        RelocalizerConfig(precision='int8')


def test_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError):
        Relocalizer.from_checkpoint(tmp_path / 'missing.pt')
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'not a checkpoint at all' * 10)
    with pytest.raises(CheckpointError):
        Relocalizer.from_checkpoint(corrupt)
    good = tiny_checkpoint(tmp_path / 'good.pt')
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        Relocalizer.from_checkpoint(truncated)


def test_bf16_network_close_to_float32(tmp_path, frames):
    path = tiny_checkpoint(tmp_path / 'tiny.pt')
    image = frames[0].image_rgb
    f32 = Relocalizer.from_checkpoint(path, RelocalizerConfig(device='cpu', precision='float32'))
    bf16 = Relocalizer.from_checkpoint(path, RelocalizerConfig(device='cpu', precision='bfloat16'))
    assert not f32.autocast_bf16 and bf16.autocast_bf16
    a = f32.predict([image]).scene_coords_b3hw
    b = bf16.predict([image]).scene_coords_b3hw
    offset = (a - f32.coord_net.scene_mean.view(1, 3, 1, 1).to(a)).norm(dim=1)
    assert float((a - b).norm(dim=1).median()) < 0.02 * float(offset.median())
    assert not torch.equal(a, b)  # bf16 really ran
    # AUTO without a precision entry in the metadata: float32 on the CPU.
    assert not Relocalizer.from_checkpoint(path, RelocalizerConfig(device='cpu')).autocast_bf16


def test_score_net_is_used_only_when_asked(tmp_path, frames):
    path = tiny_checkpoint(tmp_path / 'scored.pt', ScoreNet())
    default = Relocalizer.from_checkpoint(path, RelocalizerConfig(device='cpu', estimator=FAST))
    # a checkpoint without model settings records soft inliers
    assert default.score_net is not None and default._estimator.score_fn is None
    scored = Relocalizer.from_checkpoint(path, RelocalizerConfig(
        device='cpu', estimator=FAST, scoring='score_net'))
    calls = []
    net_score_fn = scored._estimator.score_fn
    assert net_score_fn is not None

    def spy(errors_bnhw):
        calls.append(tuple(errors_bnhw.shape))
        return net_score_fn(errors_bnhw)

    scored._estimator.score_fn = spy
    loc = scored.localize(frames[0].image_rgb, frames[0].K)
    assert calls and calls[0][:2] == (1, FAST.num_hypotheses)
    assert np.isfinite(loc.T_wc).all()


# ------------------------------------------------------------------------------------- RGB-D


def test_rgbd_oracle_pose_from_registered_depth_at_any_resolution(frames):
    reloc = oracle_relocalizer(frames)
    frame = frames[0]
    rgbd = reloc.localize(frame.image_rgb, frame.K, frame.depth_m)
    assert rgbd.mode is PoseMode.RGBD and rgbd.depth_fallback == '' and rgbd.valid
    deg, m = pose_errors(torch.tensor(rgbd.T_cw), torch.from_numpy(np.linalg.inv(frame.T_wc)))
    assert float(deg) < 0.2 and float(m) < 0.005
    assert rgbd.inlier_ratio > 0.95
    # depth at twice the colour resolution (float32, holes as 0) gives the same pose
    big = cv2.resize(np.nan_to_num(frame.depth_m, nan=0.0), None, fx=2.0, fy=2.0,
                     interpolation=cv2.INTER_NEAREST)
    again = reloc.localize(frame.image_rgb, frame.K, big.astype(np.float32))
    assert again.mode is PoseMode.RGBD
    np.testing.assert_allclose(again.T_wc, rgbd.T_wc, atol=2e-3)
    # 1 % depth noise (a real sensor's): still within a centimetre / a degree
    rng = np.random.default_rng(0)
    noisy = frame.depth_m * (1.0 + 0.01 * rng.standard_normal(frame.depth_m.shape))
    loc = reloc.localize(frame.image_rgb, frame.K, noisy.astype(np.float32))
    deg, m = pose_errors(torch.tensor(loc.T_cw), torch.from_numpy(np.linalg.inv(frame.T_wc)))
    assert loc.mode is PoseMode.RGBD and float(deg) < 1.0 and float(m) < 0.01
    assert np.isfinite(loc.covariance).all() and loc.covariance[0, 0] < 1e-3


def test_rgbd_falls_back_to_rgb_and_mixes_in_a_batch(frames):
    reloc = oracle_relocalizer(frames)
    frame = frames[1]
    rgb = reloc.localize(frame.image_rgb, frame.K)
    assert rgb.mode is PoseMode.RGB and rgb.depth_fallback == ''
    empty = np.full_like(frame.depth_m, np.nan)
    fallback = reloc.localize(frame.image_rgb, frame.K, empty)
    assert fallback.mode is PoseMode.RGB and 'valid depth' in fallback.depth_fallback
    np.testing.assert_array_equal(fallback.T_wc, rgb.T_wc)
    images = [f.image_rgb for f in frames]
    locs = reloc.localize_batch(images, [f.K for f in frames],
                                [frames[0].depth_m, None, np.zeros_like(frames[2].depth_m)])
    assert [loc.mode for loc in locs] == [PoseMode.RGBD, PoseMode.RGB, PoseMode.RGB]
    assert [bool(loc.depth_fallback) for loc in locs] == [False, False, True]
    for loc, f in zip(locs, frames):
        deg, m = pose_errors(torch.tensor(loc.T_cw), torch.from_numpy(np.linalg.inv(f.T_wc)))
        assert loc.valid and float(deg) < 0.5 and float(m) < 0.01
    # one network output, both modes (what the evaluator compares)
    prediction = reloc.predict([frame.image_rgb], [frame.K], [frame.depth_m])
    (as_rgb,) = reloc.estimate(prediction, use_depth=False)
    (as_rgbd,) = reloc.estimate(prediction)
    assert as_rgb.mode is PoseMode.RGB and as_rgbd.mode is PoseMode.RGBD
    np.testing.assert_array_equal(as_rgb.T_wc, rgb.T_wc)


@pytest.mark.parametrize('depth, match', [
    (np.zeros((120, 160), np.uint16), 'float32/float64 metres'),
    (np.zeros((120, 200), np.float32), 'registered'),
    (np.zeros((120, 160, 1), np.float32), r'\(H, W\)'),
    ([[1.0]], 'numpy array'),
])
def test_bad_depth_raises(frames, depth, match):
    with pytest.raises(ValueError, match=match):
        oracle_relocalizer(frames).localize(frames[0].image_rgb, frames[0].K, depth)


def test_rgbd_threshold_default_travels_in_the_checkpoint(tmp_path, frames):
    path = tiny_checkpoint(tmp_path / 'm.pt')
    ckpt = load_checkpoint(path)
    ckpt.metadata.update(model_settings_metadata(ModelSettings(inlier_threshold_cm=3.5)))
    reloc = Relocalizer(ckpt, RelocalizerConfig(device='cpu', estimator=FAST))
    assert reloc.estimator_config.inlier_threshold_cm == 3.5
    reloc.set_estimator_config(EstimatorConfig(num_hypotheses=8))
    assert reloc.estimator_config.inlier_threshold_cm == 3.5
    reloc.set_estimator_config(EstimatorConfig(num_hypotheses=8, inlier_threshold_cm=8.0))
    assert reloc.estimator_config.inlier_threshold_cm == 8.0
    plain = Relocalizer.from_checkpoint(path, RelocalizerConfig(device='cpu', estimator=FAST))
    assert plain.estimator_config.inlier_threshold_cm is None  # the estimator's 10 cm


def test_warm_up_runs_the_pipeline_and_leaves_it_as_it_was(frames):
    """warm_up localizes synthetic frames at the training size (the node calls it before it
    subscribes); the next real frame is localized as without it."""
    reloc = oracle_relocalizer(frames)
    times_ms = reloc.warm_up(frames=2)
    assert len(times_ms) == 2 and all(t > 0 for t in times_ms)
    assert reloc.coord_net.calls == 2
    loc = reloc.localize(frames[0].image_rgb, frames[0].K)
    deg, m = errors(loc.T_cw, frames[0].T_wc)
    assert deg < 0.1 and m < 0.002, (deg, m)
