"""Benchmark scenes: determinism by seed, layout rules, test paths that are not interpolations
of the training walks (their coverage falls in the documented ranges), camera effects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsac_ros.data.benchmark_scenes import (
    BENCHMARK_SUITE,
    CAMERA_HEIGHTS_M,
    NOISY_CAMERA,
    BenchmarkSceneConfig,
    CameraEffects,
    PathKind,
    benchmark_config,
    benchmark_trajectories,
    generate_benchmark_scene,
    make_layout,
)
from dsac_ros.data.materials import TextureStyle, make_material
from dsac_ros.data.seven_scenes import SceneDataset, load_intrinsics
from dsac_ros.data.synthetic import SyntheticRoom, SyntheticSceneConfig, trajectories
from dsac_ros.data.view_coverage import coverage_summary, nearest_training_views

TINY = BenchmarkSceneConfig(name='tiny', seed=7, kind=PathKind.FREE, width=48, height=36,
                            fx=39.0, fy=39.0, train_frames=4, test_frames=2,
                            effects=NOISY_CAMERA)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


@pytest.fixture(scope='module')
def tiny_scene(tmp_path_factory) -> Path:
    return generate_benchmark_scene(tmp_path_factory.mktemp('bench') / 'tiny', TINY)


def test_generation_is_deterministic_by_seed(tiny_scene, tmp_path):
    assert _files(tiny_scene) == _files(generate_benchmark_scene(tmp_path / 'again', TINY))
    other = generate_benchmark_scene(tmp_path / 'other', BenchmarkSceneConfig(
        seed=8, kind=PathKind.FREE, width=48, height=36, fx=39.0, fy=39.0, train_frames=2,
        test_frames=2))
    assert (other / 'seq-01/frame-000000.color.png').read_bytes() != (
        tiny_scene / 'seq-01/frame-000000.color.png').read_bytes()


def test_layout_of_a_scene_folder(tiny_scene):
    assert (tiny_scene / 'TrainSplit.txt').read_text().split() == ['sequence1', 'sequence2']
    assert (tiny_scene / 'TestSplit.txt').read_text().split() == ['sequence3']
    train, test = SceneDataset(tiny_scene, 'train'), SceneDataset(tiny_scene, 'test')
    assert (len(train), len(test)) == (4, 2)
    frame = test[0]
    assert frame.image_rgb.shape == (36, 48, 3) and frame.depth_m.shape == (36, 48)
    assert np.isfinite(frame.depth_m).all()
    np.testing.assert_allclose(load_intrinsics(tiny_scene).K, TINY.K)
    description = json.loads((tiny_scene / 'benchmark.json').read_text())
    assert description['config']['seed'] == 7 and description['config']['kind'] == 'free'
    assert description['coverage']['frames'] == 2
    # Not the demo room's scene_config.json: the demo would read it as a demo room.
    assert not (tiny_scene / 'scene_config.json').exists()


def test_layouts_keep_furniture_out_of_the_camera_volume_and_repeat_materials():
    for seed in (2, 11, 12, 25, 40):
        layout = make_layout(seed)
        (x0, y0), (x1, y1) = layout.camera_box_xy
        for block in layout.blocks:  # footprints of all but low furniture avoid the volume
            if block.center[2] + block.half_size[2] <= 0.6:
                continue
            c, s_ = abs(np.cos(block.yaw)), abs(np.sin(block.yaw))
            ext = (c * block.half_size[0] + s_ * block.half_size[1],
                   s_ * block.half_size[0] + c * block.half_size[1])
            assert (block.center[0] + ext[0] <= x0 or block.center[0] - ext[0] >= x1
                    or block.center[1] + ext[1] <= y0 or block.center[1] - ext[1] >= y1), (
                        seed, block)
        assert layout.kinds.count('pillar') >= 1 and layout.kinds.count('poster') >= 3
        posters = [s for s in layout.surfaces if s.style is TextureStyle.POSTER]
        assert posters[0].seed == posters[1].seed  # two identical prints ...
        assert posters[0].face // 6 != posters[1].face // 6  # ... on two different blocks
        walls = [s for s in layout.surfaces if s.face < 4]
        assert len({(s.style, s.seed) for s in walls}) < len(walls)  # a repeated wall material
        # Every camera of every path is in free space, inside the camera volume.
        room = SyntheticRoom(seed, layout.room_size_m, list(layout.blocks),
                             texture_fn=lambda face, h, w: np.zeros((h, w, 3), np.uint8))
        for kind in PathKind:
            train, test = benchmark_trajectories(BenchmarkSceneConfig(seed=seed, kind=kind),
                                                 layout)
            for T_wc in np.concatenate(train + [test])[::4]:
                assert room.inside_free_space(T_wc[:3, 3], margin=0.2), (seed, kind)
                assert x0 - 0.1 <= T_wc[0, 3] <= x1 + 0.1, (seed, kind)
                assert y0 - 0.1 <= T_wc[1, 3] <= y1 + 0.1, (seed, kind)
                assert CAMERA_HEIGHTS_M[0] <= T_wc[2, 3] <= CAMERA_HEIGHTS_M[1]


def _coverage(config) -> dict:
    if isinstance(config, SyntheticSceneConfig):
        train, test = trajectories(config)
    else:
        train, test = benchmark_trajectories(config, make_layout(config.seed))
    return coverage_summary(nearest_training_views(test, np.concatenate(train)))


def test_test_paths_are_not_interpolations_of_the_training_walks():
    """Full-size paths (600 / 200 frames): the nearest training view lies in the documented
    ranges, unlike the demo room, whose test loop interpolates its training loops."""
    demo = _coverage(SyntheticSceneConfig())
    for name, config in BENCHMARK_SUITE.items():
        c = _coverage(config)
        distance, angle = c['nearest_distance_m']['median'], c['nearest_angle_deg']['median']
        if config.kind is PathKind.REVISIT:
            assert 0.10 <= distance <= 0.20 and 7.0 <= angle <= 16.0, (name, c)
            assert c['bins']['near']['pct'] >= 80.0, name
        else:
            assert 0.35 <= distance <= 0.60 and 35.0 <= angle <= 55.0, (name, c)
            assert c['bins']['near']['pct'] <= 25.0, name
            assert c['angle_at_min_distance_deg']['median'] > 45.0, name
        assert angle > 3 * demo['nearest_angle_deg']['median'], name
    assert {c.kind for c in BENCHMARK_SUITE.values()} == set(PathKind)
    assert sum(c.kind is PathKind.FREE for c in BENCHMARK_SUITE.values()) >= 2
    assert sum(c.kind is PathKind.REVISIT for c in BENCHMARK_SUITE.values()) >= 2


def test_free_path_rolls_and_changes_height_unlike_the_walks():
    config = benchmark_config('free_a')
    train, test = benchmark_trajectories(config, make_layout(config.seed))

    def roll_deg(T):  # angle of the camera's x axis out of the horizontal plane
        return np.degrees(np.arcsin(np.abs(T[:, 2, 0])))

    train = np.concatenate(train)
    assert roll_deg(test).max() > 8.0 > roll_deg(train).max()
    assert np.ptp(test[:, 2, 3]) > 0.3


def test_camera_effects_are_deterministic_and_noisier_when_asked():
    rgb = np.full((24, 32, 3), 128, np.uint8)
    for effects in (CameraEffects(), NOISY_CAMERA):
        params = effects.schedule(np.random.default_rng(0), 5)
        assert params.shape == (5, 6)
        a = effects.apply(rgb, params[0], np.random.default_rng(1))
        b = effects.apply(rgb, params[0], np.random.default_rng(1))
        np.testing.assert_array_equal(a, b)
    quiet = CameraEffects(gain_drift=0, gamma_drift=0, colour_drift=0)
    noisy = NOISY_CAMERA
    flat = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    std_quiet = quiet.apply(rgb, flat, np.random.default_rng(2)).astype(float).std()
    std_noisy = noisy.apply(rgb, flat, np.random.default_rng(2)).astype(float).std()
    assert 0.5 < std_quiet < std_noisy
    gains = NOISY_CAMERA.schedule(np.random.default_rng(3), 200)[:, 0]
    assert gains.max() / gains.min() > 1.3  # exposure drifts along a sequence


def test_materials_are_deterministic_and_distinct():
    for style in TextureStyle:
        if style is TextureStyle.DEFAULT:
            with pytest.raises(ValueError):
                make_material(style, 0, 32)
            continue
        a = make_material(style, 3, 96)
        assert a.shape == (96, 96, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, make_material(style, 3, 96))
        assert not np.array_equal(a, make_material(style, 4, 96))
        assert a.astype(float).std() > 5.0, style


def test_unknown_benchmark_name_lists_the_known_ones():
    with pytest.raises(ValueError, match='revisit_a'):
        benchmark_config('nope')


def test_make_scene_cli_lists_and_renders_benchmarks(tmp_path, capsys):
    from dsac_ros.cli import make_scene

    assert make_scene.main(['--list-benchmarks']) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in BENCHMARK_SUITE)
    assert make_scene.main(['--benchmark', 'revisit_b', str(tmp_path / 'scene'), '--width', '32',
                            '--height', '24', '--fx', '26', '--fy', '26', '--train-frames', '2',
                            '--test-frames', '2']) == 0
    description = json.loads((tmp_path / 'scene' / 'benchmark.json').read_text())
    assert description['config']['name'] == 'revisit_b'
    assert description['config']['seed'] == BENCHMARK_SUITE['revisit_b'].seed
    assert description['config']['width'] == 32
    with pytest.raises(SystemExit):  # argparse: not a benchmark name
        make_scene.main(['--benchmark', 'nope', str(tmp_path / 'x')])
