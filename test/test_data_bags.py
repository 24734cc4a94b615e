"""Bag extraction with real bags written by rosbags (mcap, sqlite3, ROS 1): round trips,
TF chains vs pose topics, interpolation, gaps, errors, atomic output, the two CLIs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from dsac_ros.data.bag_extraction import BagError, BagExtractionConfig, extract_bag
from dsac_ros.data.bag_writer import SceneBagTopics, write_scene_bag
from dsac_ros.data.seven_scenes import SceneDataset, load_intrinsics
from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_scene
from dsac_ros.geometry.transforms import pose_to_matrix_np

TOPICS = SceneBagTopics()
SCENE = SyntheticSceneConfig(seed=5, width=80, height=64, fx=66.0, fy=64.0, train_frames=6,
                             test_frames=2)


@pytest.fixture(scope='module')
def scene(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp('scene') / 'room', SCENE)


@pytest.fixture(scope='module')
def bags(scene: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('bags')
    out = {}
    for fmt in ('mcap', 'sqlite3', 'ros1'):
        out[fmt] = root / (f'scene_{fmt}' + ('.bag' if fmt == 'ros1' else ''))
        assert write_scene_bag(scene, out[fmt], fmt) == SCENE.train_frames
    return out


def _config(**kwargs) -> BagExtractionConfig:
    base = dict(image_topic=TOPICS.image, camera_info_topic=TOPICS.camera_info)
    if 'camera_frame' not in kwargs:
        base['pose_topic'] = TOPICS.pose
    return BagExtractionConfig(**{**base, **kwargs})


def _assert_same_scene(a: SceneDataset, b: SceneDataset, pose_atol: float = 1e-9) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.image_rgb, fb.image_rgb)
        np.testing.assert_allclose(fa.T_wc, fb.T_wc, atol=pose_atol)
        np.testing.assert_allclose(fa.K, fb.K)
        if fa.depth_m is not None or fb.depth_m is not None:
            np.testing.assert_array_equal(fa.depth_m, fb.depth_m)


@pytest.mark.parametrize('fmt', ['mcap', 'sqlite3', 'ros1'])
def test_round_trip_all_formats(fmt: str, scene: Path, bags, tmp_path: Path) -> None:
    out = tmp_path / 'extracted'
    summary = extract_bag(bags[fmt], out, _config(depth_topic=TOPICS.depth))
    assert summary.frames_written == SCENE.train_frames and summary.skipped == {}
    assert summary.image_size == (SCENE.width, SCENE.height)
    extracted = SceneDataset(out, 'train')
    _assert_same_scene(SceneDataset(scene, 'train'), extracted)
    assert load_intrinsics(out).depth_registered
    np.testing.assert_allclose(load_intrinsics(out).K, SCENE.K)
    # Without test_fraction the one sequence is listed in both splits.
    assert len(SceneDataset(out, 'test')) == SCENE.train_frames
    assert not list(tmp_path.glob('.extracted.tmp-*'))


@pytest.mark.parametrize('fmt', ['mcap', 'ros1'])
def test_tf_chain_equals_pose_topic(fmt: str, bags, tmp_path: Path) -> None:
    extract_bag(bags[fmt], tmp_path / 'topic', _config())
    extract_bag(bags[fmt], tmp_path / 'tf',
                _config(camera_frame=TOPICS.camera_frame, world_frame=TOPICS.world_frame))
    from_topic, from_tf = SceneDataset(tmp_path / 'topic'), SceneDataset(tmp_path / 'tf')
    _assert_same_scene(from_topic, from_tf, pose_atol=1e-9)
    # The chain is not trivially the pose: camera_link alone differs from the optical frame.
    extract_bag(bags[fmt], tmp_path / 'link',
                _config(camera_frame=TOPICS.body_frame, world_frame=TOPICS.world_frame))
    link = SceneDataset(tmp_path / 'link')
    assert np.abs(link[0].T_wc - from_topic[0].T_wc).max() > 0.5


def test_compressed_png_subsample_and_split(scene: Path, tmp_path: Path) -> None:
    bag = tmp_path / 'png_bag'
    write_scene_bag(scene, bag, 'mcap', compressed='png', write_depth=False)
    summary = extract_bag(bag, tmp_path / 'out', _config(every_nth=2, test_fraction=0.34))
    assert summary.subsampled == 3 and summary.frames_written == 3
    assert (summary.train_frames, summary.test_frames) == (2, 1)
    source = SceneDataset(scene, 'train', load_depth=False)
    train = SceneDataset(tmp_path / 'out', 'train')
    test = SceneDataset(tmp_path / 'out', 'test')
    assert [f.name for f in test] == ['seq-02/frame-000000']
    for frame, index in zip([*train, *test], [0, 2, 4]):
        np.testing.assert_array_equal(frame.image_rgb, source[index].image_rgb)
        np.testing.assert_allclose(frame.T_wc, source[index].T_wc, atol=1e-9)
    limited = extract_bag(bag, tmp_path / 'few', _config(max_frames=2))
    assert limited.frames_written == 2


def test_depth_32fc1_and_compressed_jpeg(scene: Path, tmp_path: Path) -> None:
    bag = tmp_path / 'f32'
    write_scene_bag(scene, bag, 'sqlite3', compressed='jpeg', depth_encoding='32FC1')
    extract_bag(bag, tmp_path / 'out', _config(depth_topic=TOPICS.depth))
    source, out = SceneDataset(scene, 'train'), SceneDataset(tmp_path / 'out')
    for a, b in zip(source, out):
        np.testing.assert_array_equal(a.depth_m, b.depth_m)  # metres -> mm PNG is exact here
        # JPEG (4:2:0 chroma) is lossy on this texture, but luminance survives.
        grey_a, grey_b = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(int)
                          for x in (a.image_rgb, b.image_rgb))
        assert np.abs(grey_a - grey_b).mean() < 3 and grey_a.std() > 20


def _write_custom_bag(path: Path, image_times: list[float], pose_samples: list[tuple],
                      camera_info: bool = True, depth_offsets: list[float] | None = None
                      ) -> None:
    """Images (rgb8 8x8, value = index) at ``image_times`` and PoseStamped samples
    (t, translation, quaternion xyzw); stamps in seconds. ``depth_offsets``: a 16UC1 depth
    image (value = 1000 + index mm) per image, stamped and logged at image time + offset."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    T = store.types

    def header(t: float):
        ns = int(round(t * 1e9))
        return T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](
            sec=ns // 10**9, nanosec=ns % 10**9), frame_id='map')

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        img = writer.add_connection('/img', 'sensor_msgs/msg/Image', typestore=store)
        info = writer.add_connection('/info', 'sensor_msgs/msg/CameraInfo', typestore=store)
        pose = writer.add_connection('/pose', 'geometry_msgs/msg/PoseStamped', typestore=store)
        depth = writer.add_connection('/depth', 'sensor_msgs/msg/Image', typestore=store)
        events = [(t, 'pose', s) for t, *s in pose_samples]
        events += [(t, 'img', i) for i, t in enumerate(image_times)]
        events += [(t + dt, 'depth', i) for i, (t, dt) in
                   enumerate(zip(image_times, depth_offsets or []))]
        for t, kind, payload in sorted(events, key=lambda e: (e[0], e[1])):
            ns = int(round(t * 1e9))
            if kind == 'pose':
                translation, q = payload
                msg = T['geometry_msgs/msg/PoseStamped'](header=header(t), pose=T[
                    'geometry_msgs/msg/Pose'](position=T['geometry_msgs/msg/Point'](*translation),
                                              orientation=T['geometry_msgs/msg/Quaternion'](*q)))
                writer.write(pose, ns, store.serialize_cdr(msg, msg.__msgtype__))
                continue
            if kind == 'depth':
                data = np.full(64, 1000 + payload, '<u2').view(np.uint8)
                msg = T['sensor_msgs/msg/Image'](header=header(t), height=8, width=8,
                                                 encoding='16UC1', is_bigendian=0, step=16,
                                                 data=data)
                writer.write(depth, ns, store.serialize_cdr(msg, msg.__msgtype__))
                continue
            data = np.full(8 * 8 * 3, payload, np.uint8)
            msg = T['sensor_msgs/msg/Image'](header=header(t), height=8, width=8,
                                             encoding='rgb8', is_bigendian=0, step=24, data=data)
            writer.write(img, ns, store.serialize_cdr(msg, msg.__msgtype__))
            if camera_info:
                k = np.array([10.0, 0, 4, 0, 10, 4, 0, 0, 1])
                msg = T['sensor_msgs/msg/CameraInfo'](
                    header=header(t), height=8, width=8, distortion_model='', d=np.zeros(0),
                    k=k, r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0,
                    roi=T['sensor_msgs/msg/RegionOfInterest'](0, 0, 0, 0, False))
                writer.write(info, ns, store.serialize_cdr(msg, msg.__msgtype__))


def test_pose_interpolation_and_gaps(tmp_path: Path) -> None:
    q0 = Rotation.from_euler('xyz', [10, -20, 30], degrees=True)
    q1 = Rotation.from_euler('xyz', [25, -5, 60], degrees=True)
    poses = [(10.0, (0.0, 0.0, 1.0), tuple(q0.as_quat())),
             (10.1, (1.0, -2.0, 3.0), tuple(q1.as_quat())),
             (20.0, (5.0, 5.0, 5.0), (0.0, 0.0, 0.0, 1.0))]
    # 10.03: interpolated; 10.5: gap (skipped); 10.12: nearest (10.1) within tolerance;
    # 19.99: nearest 20.0 without a sample before it in tolerance.
    times = [10.03, 10.5, 10.12, 19.99]
    bag = tmp_path / 'custom'
    _write_custom_bag(bag, times, poses)
    summary = extract_bag(bag, tmp_path / 'out', BagExtractionConfig(
        image_topic='/img', camera_info_topic='/info', pose_topic='/pose',
        stamp_tolerance_s=0.08))
    assert summary.frames_written == 3 and summary.skipped == {'no_pose': 1}
    frames = SceneDataset(tmp_path / 'out')
    assert [int(f.image_rgb[0, 0, 0]) for f in frames] == [0, 2, 3]
    alpha = 0.3
    expected_R = Slerp([0, 1], Rotation.concatenate([q0, q1]))([alpha]).as_matrix()[0]
    np.testing.assert_allclose(frames[0].T_wc[:3, :3], expected_R, atol=1e-8)
    np.testing.assert_allclose(frames[0].T_wc[:3, 3], [0.3, -0.6, 1.6], atol=1e-8)
    np.testing.assert_allclose(frames[1].T_wc, pose_to_matrix_np((1, -2, 3), q1.as_quat()),
                               atol=1e-8)
    np.testing.assert_allclose(frames[2].T_wc[:3, 3], [5, 5, 5])
    np.testing.assert_allclose(frames[0].K, [[10, 0, 4], [0, 10, 4], [0, 0, 1]])
    with pytest.raises(BagError, match='no frame'):
        extract_bag(bag, tmp_path / 'none', BagExtractionConfig(
            image_topic='/img', camera_info_topic='/info', pose_topic='/pose',
            stamp_tolerance_s=0.001))
    assert not (tmp_path / 'none').exists()


def test_missing_camera_info_and_topics(scene: Path, bags, tmp_path: Path) -> None:
    bag = tmp_path / 'noinfo'
    _write_custom_bag(bag, [1.0], [(1.0, (0, 0, 0), (0, 0, 0, 1))], camera_info=False)
    with pytest.raises(BagError, match="camera info topic '/info' has no messages"):
        extract_bag(bag, tmp_path / 'a', BagExtractionConfig(
            image_topic='/img', camera_info_topic='/info', pose_topic='/pose'))
    with pytest.raises(BagError) as error:
        extract_bag(bags['mcap'], tmp_path / 'b', _config(image_topic='/nope'))
    message = str(error.value)
    assert "'/nope'" in message and TOPICS.image in message and TOPICS.pose in message
    with pytest.raises(BagError, match='expected one of'):
        extract_bag(bags['mcap'], tmp_path / 'c', _config(pose_topic=TOPICS.camera_info))
    with pytest.raises(BagError, match="frame 'base_footprint' is not in the TF tree"):
        extract_bag(bags['ros1'], tmp_path / 'd', _config(camera_frame='base_footprint'))
    assert not any(p.name.startswith('.') for p in tmp_path.iterdir())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize('fmt', ['mcap', 'sqlite3', 'ros1'])
def test_truncated_bag_is_a_clear_error(fmt: str, scene: Path, tmp_path: Path) -> None:
    bag = tmp_path / ('bag.bag' if fmt == 'ros1' else 'bag')
    write_scene_bag(scene, bag, fmt)
    files = [bag] if fmt == 'ros1' else [p for p in bag.iterdir() if p.suffix in
                                          ('.mcap', '.db3')]
    _truncate(files[0])
    out = tmp_path / 'out'
    with pytest.raises(BagError, match=r'corrupted or truncated|cannot be opened') as error:
        extract_bag(bag, out, _config(depth_topic=TOPICS.depth))
    assert str(bag) in str(error.value)
    assert not out.exists() and not list(tmp_path.glob('.out.tmp-*'))


def test_output_folder_must_be_empty(bags, tmp_path: Path) -> None:
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'x').write_text('keep')
    with pytest.raises(ValueError, match='not empty'):
        extract_bag(bags['mcap'], tmp_path / 'out', _config())
    assert (tmp_path / 'out' / 'x').read_text() == 'keep'
    with pytest.raises(ValueError, match='either pose_topic or camera_frame'):
        BagExtractionConfig(image_topic='/a', camera_info_topic='/b')


def test_clis(tmp_path: Path, capsys) -> None:
    from dsac_ros.cli import extract_bag as extract_cli
    from dsac_ros.cli import make_scene

    assert make_scene.main([str(tmp_path / 'scene'), '--width', '48', '--height', '40',
                            '--fx', '40', '--fy', '40', '--train-frames', '3', '--test-frames',
                            '1', '--seed', '2', '--bag', str(tmp_path / 'bag'),
                            '--bag-format', 'sqlite3']) == 0
    assert len(SceneDataset(tmp_path / 'scene', 'test')) == 1
    assert extract_cli.main([str(tmp_path / 'bag'), str(tmp_path / 'out'), '--image-topic',
                             TOPICS.image, '--camera-info-topic', TOPICS.camera_info,
                             '--camera-frame', TOPICS.camera_frame, '--depth-topic',
                             TOPICS.depth, '--test-fraction', '0']) == 0
    assert '3 frames written' in capsys.readouterr().out
    _assert_same_scene(SceneDataset(tmp_path / 'scene'), SceneDataset(tmp_path / 'out'))
    assert extract_cli.main([str(tmp_path / 'missing'), str(tmp_path / 'o2'), '--image-topic',
                             'a', '--camera-info-topic', 'b', '--pose-topic', 'c']) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_depth_matched_by_stamp_in_either_log_order(tmp_path: Path) -> None:
    times = [1.0, 1.1, 1.2, 1.3]
    offsets = [-0.004, 0.03, 0.09, 0.0]  # logged before, after, farther than the next, same
    bag = tmp_path / 'depth'
    poses = [(0.9 + 0.05 * k, (0, 0, 0), (0, 0, 0, 1)) for k in range(11)]
    _write_custom_bag(bag, times, poses, depth_offsets=offsets)

    def run(name: str, tolerance: float):
        return extract_bag(bag, tmp_path / name, BagExtractionConfig(
            image_topic='/img', camera_info_topic='/info', pose_topic='/pose',
            depth_topic='/depth', stamp_tolerance_s=tolerance))

    summary = run('out', 0.5)
    assert summary.frames_written == 4 and summary.skipped == {}
    frames = SceneDataset(tmp_path / 'out')
    assert [int(f.image_rgb[0, 0, 0]) for f in frames] == [0, 1, 2, 3]
    # Image 2 (1.2 s) is nearer depth 1 (1.13 s) than its own (1.29 s): the stamp decides.
    assert [round(float(f.depth_m[0, 0]) * 1000) for f in frames] == [1000, 1001, 1001, 1003]
    strict = run('strict', 0.06)
    assert strict.frames_written == 3 and strict.skipped == {'no_depth': 1}
