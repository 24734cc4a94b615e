"""Synthetic scene generator and the 7-Scenes-layout reader: determinism, depth/pose
consistency, cross-frame agreement of scene coordinates, counts, splits and errors."""

import os
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')

import cv2
import numpy as np
import pytest

from dsac_ros.data.seven_scenes import SceneDataset, load_intrinsics, scene_coordinates_from_depth
from dsac_ros.data.synthetic import (
    SyntheticRoom,
    SyntheticSceneConfig,
    generate_scene,
    trajectories,
)

SMALL = SyntheticSceneConfig(seed=3, width=160, height=120, fx=130.0, fy=130.0,
                             train_frames=6, test_frames=3)


@pytest.fixture(scope='module')
def scene(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp('synth') / 'scene', SMALL)


@pytest.fixture(scope='module')
def room():
    return SyntheticRoom(SMALL.seed, SMALL.room_size_m)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def test_generator_is_deterministic_by_seed(scene, tmp_path):
    again = generate_scene(tmp_path / 'again', SMALL)
    assert _files(scene) == _files(again)
    other = generate_scene(tmp_path / 'other', SyntheticSceneConfig(
        seed=4, width=160, height=120, fx=130.0, fy=130.0, train_frames=6, test_frames=3))
    a = (scene / 'seq-01' / 'frame-000000.color.png').read_bytes()
    b = (other / 'seq-01' / 'frame-000000.color.png').read_bytes()
    assert a != b


def test_no_half_written_output_on_existing_folder(tmp_path):
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'x').write_text('x')
    with pytest.raises(ValueError, match='not empty'):
        generate_scene(tmp_path / 'busy', SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['busy']


def test_reader_counts_splits_and_fields(scene):
    train = SceneDataset(scene, 'train')
    test = SceneDataset(scene, 'test')
    n_loops = len(SMALL.loop_heights_m)
    assert len(train) == SMALL.train_frames and len(test) == SMALL.test_frames
    assert (scene / 'TrainSplit.txt').read_text().split() == [
        f'sequence{k + 1}' for k in range(n_loops)]
    assert (scene / 'TestSplit.txt').read_text().split() == [f'sequence{n_loops + 1}']
    names = [train[i].name for i in range(len(train))]
    assert names == sorted(names) and names[0] == 'seq-01/frame-000000'
    assert all(test[i].name.startswith(f'seq-{n_loops + 1:02d}/') for i in range(len(test)))
    frame = train[1]
    assert frame.image_rgb.shape == (120, 160, 3) and frame.image_rgb.dtype == np.uint8
    assert frame.depth_m.shape == (120, 160) and frame.depth_m.dtype == np.float32
    assert frame.T_wc.shape == (4, 4) and frame.T_wc.dtype == np.float64
    np.testing.assert_allclose(frame.K, SMALL.K)
    np.testing.assert_allclose(frame.K_depth, SMALL.K)
    assert load_intrinsics(scene).depth_registered
    train_poses, _ = trajectories(SMALL)
    np.testing.assert_allclose(frame.T_wc, train_poses[0][1], atol=1e-8)
    # The textured scene is not flat: strong local contrast everywhere.
    gray = cv2.cvtColor(frame.image_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    cells = gray[:112, :160].reshape(14, 8, 20, 8).std(axis=(1, 3))
    assert np.mean(cells > 4.0) > 0.9


def test_test_trajectory_is_near_but_not_on_training(room):
    cfg = SyntheticSceneConfig(seed=3, train_frames=300, test_frames=60)
    train, test = trajectories(cfg)
    for T in np.concatenate(train + [test]):
        assert room.inside_free_space(T[:3, 3], margin=0.2), 'camera inside furniture or wall'
    centres_train = np.concatenate([p[:, :3, 3] for p in train])
    dirs_train = np.concatenate([p[:, :3, 2] for p in train])
    for T in test:
        dist = np.linalg.norm(centres_train - T[:3, 3], axis=1)
        angle = np.degrees(np.arccos(np.clip(dirs_train @ T[:3, 2], -1, 1)))
        close = (dist < 0.35) & (angle < 15)
        assert close.any(), 'test view far from every training view'
        assert dist.min() > 1e-4, 'test view duplicates a training view'


def _on_surface_distance(room: SyntheticRoom, points: np.ndarray) -> np.ndarray:
    """Distance (m) from each world point to the nearest room/block surface, computed from
    the scene description alone (independent of the renderer's ray casting)."""
    size = np.array(room.room_size_m)
    inside_room = np.all((points > -1e-3) & (points < size + 1e-3), axis=1)
    d = np.where(inside_room, np.minimum(np.abs(points), np.abs(points - size)).min(axis=1),
                 np.inf)
    for block in room.blocks:
        local = (points - np.array(block.center)) @ block.R
        hs = np.array(block.half_size)
        within = np.all(np.abs(local) <= hs + 2e-3, axis=1)
        d_block = np.abs(np.abs(local) - hs).min(axis=1)
        d = np.where(within, np.minimum(d, d_block), d)
    return d


def _backproject_all(depth: np.ndarray, K: np.ndarray, T_wc: np.ndarray) -> np.ndarray:
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
    cam = (pix @ np.linalg.inv(K).T) * depth.reshape(-1, 1)
    return cam @ T_wc[:3, :3].T + T_wc[:3, 3]


def test_depth_consistent_with_pose(room, scene):
    train, _ = trajectories(SMALL)
    T_wc = train[1][1]
    _, depth = room.render_frame(T_wc, SMALL.K, SMALL.width, SMALL.height)
    assert np.isfinite(depth).all() and depth.min() > 0.2
    d_exact = _on_surface_distance(room, _backproject_all(depth, SMALL.K, T_wc))
    assert d_exact.max() < 1e-4
    # The same through the written 16-bit millimetre PNG and the reader.
    frame = SceneDataset(scene, 'train')[3]  # seq-02 frame 1
    points = _backproject_all(frame.depth_m, frame.K_depth, frame.T_wc)
    assert _on_surface_distance(room, points).max() < 1.5e-3


def test_cell_centre_convention_matches_geometry(room):
    train, _ = trajectories(SMALL)
    T_wc = train[0][0]
    _, depth = room.render_frame(T_wc, SMALL.K, SMALL.width, SMALL.height)
    coords = scene_coordinates_from_depth(depth, SMALL.K, T_wc, stride=8)
    assert coords.shape == (3, 15, 20) and coords.dtype == np.float32
    # Project with OpenCV and compare with cell centres (8 j + 4, 8 i + 4).
    T_cw = np.linalg.inv(T_wc)
    rvec, _ = cv2.Rodrigues(T_cw[:3, :3])
    pix, _ = cv2.projectPoints(coords.reshape(3, -1).T.astype(np.float64), rvec,
                               T_cw[:3, 3], SMALL.K, None)
    jj, ii = np.meshgrid(np.arange(20), np.arange(15))
    expected = np.stack([8 * jj + 4, 8 * ii + 4], -1).reshape(-1, 2)
    np.testing.assert_allclose(pix.reshape(-1, 2), expected, atol=1e-3)
    try:
        from dsac_ros.geometry.camera import cell_centers
    except ImportError:
        return
    centres = cell_centers(15, 20, 8).numpy()
    np.testing.assert_allclose(centres[0], 8 * jj + 4)
    np.testing.assert_allclose(centres[1], 8 * ii + 4)


def test_invalid_depth_gives_nan():
    depth = np.full((16, 24), 2.0, np.float32)
    depth[4, 4] = np.nan
    depth[4, 12] = 0.0
    coords = scene_coordinates_from_depth(depth, SMALL.K, np.eye(4), stride=8)
    assert np.isnan(coords[:, 0, 0]).all() and np.isnan(coords[:, 0, 1]).all()
    assert np.isfinite(coords[:, 0, 2]).all() and np.isfinite(coords[:, 1]).all()
    np.testing.assert_allclose(coords[2, 1, 2], 2.0)


def _depth_at(depth: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of inverse depth (exact on a plane) at sub-pixel points."""
    u0 = np.floor(uv[:, 0]).astype(int)
    v0 = np.floor(uv[:, 1]).astype(int)
    a, b = uv[:, 0] - u0, uv[:, 1] - v0
    inv = 1.0 / depth.astype(np.float64)
    val = ((1 - a) * (1 - b) * inv[v0, u0] + a * (1 - b) * inv[v0, u0 + 1]
           + (1 - a) * b * inv[v0 + 1, u0] + a * b * inv[v0 + 1, u0 + 1])
    return 1.0 / val


def test_same_surface_point_from_two_frames_agrees(room):
    train, _ = trajectories(SyntheticSceneConfig(seed=3, train_frames=60, test_frames=3))
    T_a, T_b = train[0][0], train[0][2]
    K, w, h = SMALL.K, SMALL.width, SMALL.height
    _, depth_a = room.render_frame(T_a, K, w, h)
    _, depth_b = room.render_frame(T_b, K, w, h)
    points = scene_coordinates_from_depth(depth_a, K, T_a).reshape(3, -1).T.astype(np.float64)
    T_cw_b = np.linalg.inv(T_b)
    cam_b = points @ T_cw_b[:3, :3].T + T_cw_b[:3, 3]
    rvec, _ = cv2.Rodrigues(T_cw_b[:3, :3])
    uv, _ = cv2.projectPoints(points, rvec, T_cw_b[:3, 3], K, None)
    uv = uv.reshape(-1, 2)
    inside = (uv[:, 0] > 1) & (uv[:, 0] < w - 2) & (uv[:, 1] > 1) & (uv[:, 1] < h - 2)
    z_b = _depth_at(depth_b, np.where(inside[:, None], uv, 2.0))
    visible = inside & (np.abs(z_b - cam_b[:, 2]) < 0.05)  # not occluded in B
    assert visible.sum() > 0.5 * len(points)
    ray = np.concatenate([uv, np.ones((len(uv), 1))], 1) @ np.linalg.inv(K).T
    from_b = (ray * z_b[:, None]) @ T_b[:3, :3].T + T_b[:3, 3]
    err = np.linalg.norm(from_b - points, axis=1)[visible]
    # Cells whose 2x2 neighbourhood straddles an edge are not planar; all others are exact.
    assert np.median(err) < 1e-4
    assert np.mean(err < 1e-3) > 0.95


def test_reader_errors_name_the_file(scene, tmp_path):
    import shutil
    broken = tmp_path / 'broken'
    shutil.copytree(scene, broken)
    (broken / 'seq-01' / 'frame-000001.pose.txt').unlink()
    with pytest.raises(ValueError, match='seq-01'):
        SceneDataset(broken, 'train')
    (broken / 'TestSplit.txt').write_text('sequence9\n')
    with pytest.raises(FileNotFoundError, match='seq-09'):
        SceneDataset(broken, 'test')
    (broken / 'TestSplit.txt').write_text('seq 1\n')
    with pytest.raises(ValueError, match='TestSplit.txt:1'):
        SceneDataset(broken, 'test')
    with pytest.raises(ValueError, match='split'):
        SceneDataset(scene, 'val')
    bad = tmp_path / 'bad_pose'
    shutil.copytree(scene, bad)
    (bad / 'seq-02' / 'frame-000000.pose.txt').write_text('1 2 3\n')
    with pytest.raises(ValueError, match='frame-000000.pose.txt'):
        SceneDataset(bad, 'train')[2]
    (bad / 'seq-02' / 'frame-000001.color.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='frame-000001.color.png'):
        SceneDataset(bad, 'train')[3]


def test_seven_scenes_defaults_and_65535_invalid(tmp_path):
    seq = tmp_path / 'seq-01'
    seq.mkdir()
    cv2.imwrite(str(seq / 'frame-000000.color.png'), np.zeros((48, 64, 3), np.uint8))
    depth = np.full((48, 64), 1500, np.uint16)
    depth[0, 0], depth[0, 1] = 0, 65535
    cv2.imwrite(str(seq / 'frame-000000.depth.png'), depth)
    np.savetxt(seq / 'frame-000000.pose.txt', np.eye(4))
    (tmp_path / 'TrainSplit.txt').write_text('sequence1\n')
    frame = SceneDataset(tmp_path, 'train')[0]
    assert np.isnan(frame.depth_m[0, :2]).all()
    np.testing.assert_allclose(frame.depth_m[1, 1], 1.5)
    # 7-Scenes defaults (640x480: colour f = 525, depth f = 585) scaled to the image size.
    np.testing.assert_allclose(frame.K[0, 0], 525 * 64 / 640)
    np.testing.assert_allclose(frame.K_depth[0, 0], 585 * 64 / 640)
