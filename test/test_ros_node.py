"""relocalize_node as a real process on loopback DDS, driven by a real rclpy client.

Model: the shipped demo model (dsac_ros/assets/demo_model.pt) when present; otherwise a tiny
untrained network saved in-test, with which the node runs the same code path but finds no pose,
so the tests that need poses are skipped with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path
import random
import threading
import time

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage

from dsac_ros.demo.player import load_frames
from dsac_ros.demo.processes import RosProcesses, module_command, node_command, wait_for
from dsac_ros.demo.trajectory import load_json, summarize_recording
from dsac_ros.geometry.transforms import inflate_pose_covariance_np, pose_errors_np
from dsac_ros.ros import messages
from dsac_ros.ros.node import default_model_path
from dsac_ros.ros.tf_broadcaster import TF_QOS

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / 'config' / 'relocalize.yaml'
# DSAC_ROS_TEST_MODEL: run these tests with another trained synthetic-scene checkpoint.
SHIPPED_MODEL = Path(os.environ.get('DSAC_ROS_TEST_MODEL') or default_model_path())
HAS_REAL_MODEL = SHIPPED_MODEL.is_file()
NEEDS_REAL_MODEL = pytest.mark.skipif(
    not HAS_REAL_MODEL, reason=f'needs the trained demo model {SHIPPED_MODEL}')
SCENE_FRAMES = 16


# -- shared set-up ------------------------------------------------------------------------------

@pytest.fixture(scope='session')
def scene_dir(tmp_path_factory) -> Path:
    """The first test frames of the demo scene (the shipped model's scene config)."""
    from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_test_sequence
    from dsac_ros.demo.run import scene_config_for_model

    config = scene_config_for_model(SHIPPED_MODEL) if HAS_REAL_MODEL else SyntheticSceneConfig()
    return generate_test_sequence(tmp_path_factory.mktemp('scene'), config, SCENE_FRAMES)


@pytest.fixture(scope='session')
def model_path(tmp_path_factory) -> Path:
    if HAS_REAL_MODEL:
        return SHIPPED_MODEL
    return make_tiny_checkpoint(tmp_path_factory.mktemp('model') / 'tiny.pt')


def make_tiny_checkpoint(path: Path) -> Path:
    """An untrained, very small scene-coordinate net for the default synthetic camera."""
    import torch

    from dsac_ros.data.synthetic import SyntheticSceneConfig
    from dsac_ros.models.checkpoint import save_checkpoint
    from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet, SceneCoordinateNetConfig

    torch.manual_seed(0)
    net = SceneCoordinateNet(SceneCoordinateNetConfig(stem_widths=(8, 8, 16), num_blocks=1,
                                                      head_width=16))
    net.set_scene_mean(torch.tensor([3.0, 2.5, 1.5]))
    scene = SyntheticSceneConfig()
    return save_checkpoint(path, net, None, torch.tensor(scene.K), (scene.height, scene.width))


# A camera alone (no robot TF): map -> <camera>_dsac on /tf, no base pose.
NODE_TEST_PARAMS = {'num_threads': 1, 'input_reliability': 'reliable',
                    'diagnostics_period_s': 0.2, 'num_hypotheses': 64,
                    'tf_mode': 'map_to_camera', 'base_frame': ''}


_DOMAINS = iter(random.Random().sample(range(101, 233), 132))


def own_domain(ros_env: dict[str, str]) -> dict[str, str]:
    """ros_env with a ROS_DOMAIN_ID of its own (101..232; conftest draws 1..100), so that a
    test's node never sees another test's node or client."""
    return {**ros_env, 'ROS_DOMAIN_ID': str(next(_DOMAINS))}


class RosClient:
    """In-test rclpy participant: publishes camera messages, collects the node's outputs.

    Args:
        env: the environment whose ROS_DOMAIN_ID to join (os.environ's when None).
        reliable: QoS reliability of the camera publishers.
    """

    def __init__(self, env: dict[str, str] | None = None, reliable: bool = True) -> None:
        self.context = rclpy.Context()
        domain = int((env or os.environ)['ROS_DOMAIN_ID'])
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node('test_client', context=self.context)
        self.lock = threading.Lock()
        self.poses: list[PoseStamped] = []
        self.poses_cov: list[PoseWithCovarianceStamped] = []
        self.tf: list[TFMessage] = []
        self.diagnostics: list[dict[str, str]] = []
        n = self.node
        n.create_subscription(PoseStamped, '/camera_pose', self._store(self.poses), 50)
        n.create_subscription(PoseWithCovarianceStamped, '/camera_pose_with_covariance',
                              self._store(self.poses_cov), 50)
        n.create_subscription(TFMessage, '/tf', self._store(self.tf), TF_QOS)
        n.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        self.image_pub = n.create_publisher(Image, '/camera/image_raw', qos)
        self.info_pub = n.create_publisher(CameraInfo, '/camera/camera_info', qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _store(self, target: list):
        def callback(msg) -> None:
            with self.lock:
                target.append(msg)
        return callback

    def _on_diag(self, msg: DiagnosticArray) -> None:
        values = messages.diagnostic_values(msg)
        if values:
            with self.lock:
                self.diagnostics.append(values)

    def last_diag(self) -> dict[str, str]:
        with self.lock:
            return dict(self.diagnostics[-1]) if self.diagnostics else {}

    def counter(self, key: str) -> float:
        return float(self.last_diag().get(key, 'nan'))

    def wait_node(self, timeout_s: float = 60.0, children=()) -> bool:
        """Until the node subscribes to the image topic and reports diagnostics."""
        return wait_for(lambda: self.image_pub.get_subscription_count() > 0
                        and bool(self.last_diag()), timeout_s, children=children)

    def publish(self, image: Image, info: CameraInfo | None) -> int:
        """Publishes image (+ info) stamped now; returns the stamp in ns."""
        stamp_ns = time.time_ns()
        messages.ns_to_stamp(stamp_ns, image.header.stamp)
        if info is not None:
            info.header.stamp = image.header.stamp
            self.info_pub.publish(info)
        self.image_pub.publish(image)
        return stamp_ns

    def handled(self) -> float:
        """Frames the node has finished with (localized or rejected), per /diagnostics."""
        d = self.last_diag()
        return float(d.get('frames_processed', 0)) + float(d.get('frames_rejected', 0))

    def settled(self, received: float = 0.0) -> bool:
        """The node has received more than ``received`` frames and finished with every one
        (localized, rejected, replaced, or without camera_info), per /diagnostics."""
        d = self.last_diag()
        got = float(d.get('frames_received', 0))
        done = sum(float(d.get(k, 0)) for k in (
            'frames_processed', 'frames_rejected', 'frames_dropped', 'frames_unmatched',
            'frames_failed', 'frames_not_requested'))
        return got > received and done == got

    def settled_diag(self, timeout_s: float = 30.0) -> dict[str, str]:
        """A /diagnostics report sent after the node finished with every frame it got (two
        reports after this call, so not a late one from before)."""
        with self.lock:
            seen = len(self.diagnostics)
        assert wait_for(lambda: len(self.diagnostics) >= seen + 2
                        and self.settled(-1.0), timeout_s), self.last_diag()
        return self.last_diag()

    def publish_and_wait(self, image, info, timeout_s: float = 30.0) -> int:
        """Publishes one frame and waits until the node has finished with it (so the next
        frame cannot replace it, whatever the machine's load); returns its stamp. The count
        before comes from a settled report (`settled_diag`), so that a late report of an
        earlier frame cannot pass for this one."""
        received = float(self.settled_diag(timeout_s)['frames_received'])
        stamp = self.publish(image, info)
        assert wait_for(lambda: self.settled(received), timeout_s), self.last_diag()
        return stamp

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(5.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture(scope='module')
def frames(scene_dir):
    return load_frames(scene_dir, 'test')


@pytest.fixture(scope='module')
def running_node(ros_env, model_path, tmp_path_factory):
    """One node process for the module (tests use disjoint checks); stopped with SIGINT."""
    env = own_domain(ros_env)
    with RosProcesses(env, tmp_path_factory.mktemp('node_logs')) as procs:
        node = procs.start('node', node_command(
            PARAMS_FILE, {'model_path': str(model_path), **NODE_TEST_PARAMS}))
        client = RosClient(env)
        try:
            assert client.wait_node(60.0, children=[node]), node.log()
            yield node, client, procs
        finally:
            client.close()
        code = procs.stop(node)
        assert code == 0, node.log()


def _good(frame, with_info: bool = True):
    image = messages.rgb_to_image_msg(frame.image_rgb, 'camera_optical')
    info = None
    if with_info:
        height, width = frame.image_rgb.shape[:2]
        info = messages.intrinsics_to_camera_info(frame.K, width, height, 'camera_optical')
    return image, info


# -- start-up errors --------------------------------------------------------------------------

@pytest.mark.parametrize('content,expect', [
    (b'this is not a torch checkpoint' * 10, 'cannot be read'),
    (None, 'does not exist'),
])
def test_bad_checkpoint_exits_nonzero_with_clear_message(ros_env, tmp_path, content, expect):
    path = tmp_path / 'model.pt'
    if content is not None:
        path.write_bytes(content)
    with RosProcesses(ros_env, tmp_path) as procs:
        node = procs.start('node', node_command(PARAMS_FILE, {'model_path': str(path)}))
        code = node.process.wait(60)
    assert code != 0
    log = node.log()
    assert 'cannot start' in log and str(path) in log and expect in log, log


def test_truncated_real_checkpoint_is_refused(ros_env, tmp_path, model_path):
    data = model_path.read_bytes()
    path = tmp_path / 'truncated.pt'
    path.write_bytes(data[: len(data) // 2])
    with RosProcesses(ros_env, tmp_path) as procs:
        node = procs.start('node', node_command(PARAMS_FILE, {'model_path': str(path)}))
        code = node.process.wait(60)
    assert code == 2 and 'cannot start' in node.log() and str(path) in node.log(), node.log()


@pytest.mark.parametrize('name,value,expect', [
    ('num_hypotheses', 0, 'num_hypotheses'),
    ('input_reliability', 'sometimes', 'input_reliability'),
    ('map_frame', '/map', 'map_frame'),
    ('inlier_threshold_px', 'wide', 'inlier_threshold_px'),
])
def test_invalid_startup_parameter_exits_nonzero(ros_env, tmp_path, model_path, name, value,
                                                 expect):
    with RosProcesses(ros_env, tmp_path) as procs:
        node = procs.start('node', node_command(
            PARAMS_FILE, {'model_path': str(model_path), name: value}))
        code = node.process.wait(60)
    assert code == 2, node.log()
    assert 'cannot start' in node.log() and expect in node.log(), node.log()


# -- a running node ---------------------------------------------------------------------------

def test_runtime_parameters_validated_with_reasons(running_node):
    node, client, _ = running_node
    params = AsyncParameterClient(client.node, 'relocalize_node')
    assert params.wait_for_services(10.0)

    def set_one(name, value):
        future = params.set_parameters([Parameter(name, value=value)])
        assert wait_for(future.done, 10.0)
        return future.result().results[0]

    refused = {
        ('num_hypotheses', 0): 'minimum',
        ('num_hypotheses', 100000): 'maximum',
        ('map_frame', '/map'): 'map_frame',
        ('max_rate_hz', -1.0): 'max_rate_hz',
        ('image_topic', '/other'): 'read-only',
        ('selection', 'best'): 'selection',
        ('inlier_threshold_px', 'wide'): 'number',
    }
    for (name, value), reason in refused.items():
        result = set_one(name, value)
        assert not result.successful, (name, value)
        assert reason in result.reason.lower() or name in result.reason, result.reason
    ok = set_one('num_hypotheses', 32)
    assert ok.successful, ok.reason
    future = params.get_parameters(['num_hypotheses'])
    assert wait_for(future.done, 10.0)
    assert future.result().values[0].integer_value == 32
    assert set_one('num_hypotheses', NODE_TEST_PARAMS['num_hypotheses']).successful
    assert set_one('selection', 'softam').successful and set_one('selection', 'ransac').successful
    assert set_one('inlier_threshold_px', 12).successful  # an integer for a float is fine
    assert set_one('inlier_threshold_px', 10.0).successful
    assert node.returncode is None


def test_max_rate_limits_processing_at_run_time(running_node, frames):
    node, client, _ = running_node
    params = AsyncParameterClient(client.node, 'relocalize_node')
    assert params.wait_for_services(10.0)

    def set_rate(value):
        future = params.set_parameters([Parameter('max_rate_hz', value=value)])
        assert wait_for(future.done, 10.0) and future.result().results[0].successful

    set_rate(2.0)
    try:
        image, info = _good(frames[1])
        keys = ('frames_received', 'frames_processed', 'frames_dropped', 'frames_unmatched',
                'frames_rejected', 'frames_failed')
        before = client.settled_diag()
        start = time.monotonic()
        for _ in range(20):  # 20 Hz for 1 s
            client.publish(image, info)
            time.sleep(0.05)
        # Once every frame is accounted for, compare counts from one report.
        after = client.settled_diag()
        elapsed = time.monotonic() - start
        got, done, dropped, unmatched, rejected, failed = (
            float(after.get(k, 0)) - float(before.get(k, 0)) for k in keys)
        # 2 Hz over `elapsed`: at most 2 * elapsed frames (+1 in flight, +1 at the start);
        # the rest replaced by newer ones, none queued and none lost.
        assert 1 <= done <= 2.0 * elapsed + 2, (done, elapsed)
        assert got >= 10 and rejected == failed == 0, after
        assert dropped + unmatched == got - done, after
    finally:
        set_rate(0.0)


def test_bad_messages_do_not_stop_the_node(running_node, frames):
    node, client, _ = running_node
    frame = frames[0]
    height, width = frame.image_rgb.shape[:2]
    good_image, good_info = _good(frame)
    settled = client.settled_diag()  # the previous test's last frames are done and counted
    rejected_before = float(settled['frames_rejected'])
    processed_before = float(settled['frames_processed'])

    yuv = messages.rgb_to_image_msg(frame.image_rgb, 'camera_optical')
    yuv.encoding = 'yuv422'
    small = messages.rgb_to_image_msg(frame.image_rgb[: height // 2, : width // 2].copy())
    empty = messages.rgb_to_image_msg(frame.image_rgb)
    empty.data = []
    nan = Image(height=height, width=width, encoding='32FC1', step=width * 4,
                data=np.full((height, width), np.nan, np.float32).tobytes())
    bad = [(yuv, good_info), (small, good_info), (empty, good_info), (nan, good_info)]
    for image, info in bad:
        client.publish_and_wait(image, info)  # one at a time: the node keeps the newest only
    assert client.counter('frames_rejected') == rejected_before + len(bad), client.last_diag()
    assert node.returncode is None
    log = node.log()
    for needle in ('yuv422', 'camera_info is', 'empty', '32FC1'):
        assert needle in log, (needle, log[-2000:])
    # The node still localizes a good frame afterwards.
    stamp = client.publish_and_wait(good_image, good_info)
    assert client.counter('frames_processed') == processed_before + 1
    if HAS_REAL_MODEL:
        assert wait_for(lambda: any(messages.stamp_to_ns(p.header.stamp) == stamp
                                    for p in list(client.poses)), 20.0)


def test_compressed_input_without_camera_info(ros_env, model_path, frames, tmp_path):
    """A node on CompressedImage (jpeg, image_transport's <topic>/compressed) that never gets
    camera_info warns once, falls back to the model's intrinsics and still localizes."""
    env = own_domain(ros_env)
    with RosProcesses(env, tmp_path) as procs:
        node = procs.start('node', node_command(PARAMS_FILE, {
            'model_path': str(model_path), 'compressed_input': True, **NODE_TEST_PARAMS}))
        client = RosClient(env)
        jpeg_pub = client.node.create_publisher(
            CompressedImage, '/camera/image_raw/compressed',
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        try:
            assert wait_for(lambda: jpeg_pub.get_subscription_count() > 0
                            and bool(client.last_diag()), 60.0, children=[node]), node.log()
            for frame in frames[:3]:
                ok, jpeg = cv2.imencode('.jpg', cv2.cvtColor(frame.image_rgb, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, 95])
                msg = CompressedImage(format='jpeg', data=jpeg.tobytes())
                msg.header.frame_id = 'camera_optical'
                before = client.handled()
                messages.ns_to_stamp(time.time_ns(), msg.header.stamp)
                jpeg_pub.publish(msg)
                assert wait_for(lambda b=before: client.handled() > b, 30.0), client.last_diag()
            assert client.counter('frames_processed') == 3, client.last_diag()
            assert client.counter('frames_rejected') == 0
            if HAS_REAL_MODEL:
                assert wait_for(lambda: len(client.poses) >= 2, 10.0)
        finally:
            client.close()
        assert procs.stop(node) == 0
    log = node.log()
    assert log.count('no camera_info received') == 1, log
    assert '/camera/image_raw/compressed' in log


class _KnownPoseRelocalizer:
    """Deterministic stand-in for Relocalizer: a fixed pose and covariance, so the test checks
    the node's adapter (messages, frames, stamps, TF, covariance mapping, the estimator
    parameters it hands over, among them min_inliers) exactly. Like the estimator, it gives a
    valid pose only with at least ``min_inliers_for_pose`` inliers."""

    def __init__(self, inliers: int) -> None:
        from dsac_ros.dsac import EstimatorConfig

        rng = np.random.default_rng(7)
        self.T_wc = np.eye(4)
        self.T_wc[:3, :3] = cv2.Rodrigues(rng.normal(size=3))[0]
        self.T_wc[:3, 3] = [1.5, -0.7, 1.2]
        A = rng.normal(size=(6, 6)) * 1e-2
        self.covariance = A @ A.T
        self.inliers = inliers
        self.estimator_config = EstimatorConfig()
        # what a checkpoint trained at 320x240 records (the node's threshold 0 takes it)
        self.model_estimator_config = EstimatorConfig(inlier_threshold_px=5.0)

    def set_estimator_config(self, config) -> None:
        self.estimator_config = config

    def localize(self, image, K):
        valid = self.inliers >= self.estimator_config.min_inliers_for_pose
        return type('Localization', (), {
            'T_wc': self.T_wc, 'T_cw': np.linalg.inv(self.T_wc), 'valid': valid,
            'inlier_count': self.inliers, 'inlier_ratio': 0.5, 'score_entropy': 0.25,
            'covariance': self.covariance, 'timings': {'network': 1.0, 'estimator': 1.0}})()


def test_published_messages_carry_the_relocalizer_pose(ros_env, frames):
    from dsac_ros.ros.node import RelocalizeNode
    from dsac_ros.ros.parameters import NodeSettings

    defaults = NodeSettings()
    env = own_domain(ros_env)
    client = RosClient(env)
    reloc = _KnownPoseRelocalizer(inliers=120)
    node = RelocalizeNode(relocalizer=reloc, context=client.context, parameter_overrides=[
        Parameter('input_reliability', value='reliable'),
        Parameter('diagnostics_period_s', value=0.2), Parameter('min_inliers', value=100),
        Parameter('tf_mode', value='map_to_camera'), Parameter('covariance_scale', value=2.0)])
    client.executor.add_node(node)
    try:
        assert wait_for(lambda: client.image_pub.get_subscription_count() > 0, 10.0)
        stamp = client.publish(*_good(frames[0]))
        assert wait_for(lambda: client.poses and client.poses_cov and client.tf, 10.0)
        pose, pose_cov, tf = client.poses[0], client.poses_cov[0], client.tf[0].transforms[0]
        for header in (pose.header, pose_cov.header, tf.header):
            assert messages.stamp_to_ns(header.stamp) == stamp and header.frame_id == 'map'
        # camera_frame empty: the image frame_id; the TF child is a frame of the node's own.
        assert tf.child_frame_id == 'camera_optical_dsac'

        np.testing.assert_allclose(messages.pose_msg_to_matrix(pose.pose), reloc.T_wc,
                                   atol=1e-12)
        np.testing.assert_allclose(messages.pose_msg_to_matrix(pose_cov.pose.pose), reloc.T_wc,
                                   atol=1e-12)
        np.testing.assert_allclose(messages.transform_msg_to_matrix(tf.transform), reloc.T_wc,
                                   atol=1e-12)
        np.testing.assert_allclose(np.reshape(pose_cov.pose.covariance, (6, 6)),
                                   inflate_pose_covariance_np(
                                       messages.covariance_to_ros(reloc.covariance, reloc.T_wc),
                                       2.0, defaults.covariance_floor_m,
                                       defaults.covariance_floor_rad))
        # The node's parameters reach the relocalizer; below min_inliers: processed, no pose.
        assert defaults.covariance_floor_m > 0
        assert reloc.estimator_config.min_inliers_for_pose == 100
        assert reloc.estimator_config.inlier_threshold_px == 5.0
        reloc.inliers = 99
        client.publish(*_good(frames[1]))
        assert wait_for(lambda: client.counter('frames_without_pose') >= 1, 5.0)
        assert len(client.poses) == 1 and len(client.tf) == 1
        assert client.last_diag()['last_inliers'] == '99'
    finally:
        client.executor.remove_node(node)
        node.destroy_node()
        client.close()


@NEEDS_REAL_MODEL
def test_pose_tf_and_covariance_agree(running_node, frames):
    node, client, _ = running_node
    stamps = [client.publish_and_wait(*_good(frame)) for frame in frames[:6]]

    def by_stamp(msgs, stamp_of):
        return {stamp_of(m): m for m in list(msgs)}

    assert wait_for(lambda: len([p for p in list(client.poses)
                                 if messages.stamp_to_ns(p.header.stamp) in stamps]) >= 4, 20.0)
    time.sleep(0.3)
    poses = by_stamp(client.poses, lambda m: messages.stamp_to_ns(m.header.stamp))
    covs = by_stamp(client.poses_cov, lambda m: messages.stamp_to_ns(m.header.stamp))
    tfs = by_stamp([t for msg in client.tf for t in msg.transforms],
                   lambda t: messages.stamp_to_ns(t.header.stamp))
    checked = 0
    for stamp in stamps:
        if stamp not in poses:
            continue
        pose = poses[stamp]
        assert pose.header.frame_id == 'map'
        T_pose = messages.pose_msg_to_matrix(pose.pose)
        tf = tfs[stamp]
        assert (tf.header.frame_id, tf.child_frame_id) == ('map', 'camera_optical_dsac')
        np.testing.assert_allclose(messages.transform_msg_to_matrix(tf.transform), T_pose,
                                   atol=1e-9)
        cov_msg = covs[stamp]
        np.testing.assert_allclose(messages.pose_msg_to_matrix(cov_msg.pose.pose), T_pose,
                                   atol=1e-9)
        cov = np.asarray(cov_msg.pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(cov, cov.T, atol=1e-12)
        assert (np.diag(cov) > 0).all() and np.linalg.eigvalsh(cov).min() > -1e-12
        checked += 1
    assert checked >= 4


# -- player -> node -> recorder, all separate processes ---------------------------------------

@pytest.fixture(scope='module')
def played(ros_env, model_path, scene_dir, tmp_path_factory):
    """Runs player, node and recorder processes once; returns (gt, recorded, node log). The
    player also publishes depth (which this RGB node does not read) and the recorder keeps the
    diagnostics of this node only, the demo's RGB-D set-up."""
    out = tmp_path_factory.mktemp('played')
    gt_path, poses_path, ready = out / 'gt.json', out / 'poses.json', out / 'ready'
    with RosProcesses(own_domain(ros_env), out) as procs:
        recorder = procs.start('recorder', module_command(
            'dsac_ros.demo.pose_recorder', str(poses_path), '--ready-file', str(ready),
            '--node', 'relocalize_node'))
        node = procs.start('node', node_command(
            PARAMS_FILE, {'model_path': str(model_path), **NODE_TEST_PARAMS}))
        assert wait_for(ready.exists, 30.0, children=[recorder]), recorder.log()
        player = procs.start('player', module_command(
            'dsac_ros.demo.player', str(scene_dir), '--rate', '5', '--gt-out', str(gt_path),
            '--wait-timeout', '60', '--depth-topic', DEPTH_TOPIC, '--depth-noise', '0.01'))
        assert player.process.wait(90) == 0, player.log()
        time.sleep(3.0)  # the node finishes its last frame and reports once more
        assert procs.stop(recorder) == 0, recorder.log()
        assert procs.stop(node) == 0, node.log()
    return load_json(gt_path), load_json(poses_path), node.log()


def test_player_node_recorder_pipeline(played):
    gt, recorded, log = played
    assert len(gt['frames']) == SCENE_FRAMES
    assert all(f['name'] for f in gt['frames'])
    diag = recorded['diagnostics']
    received = int(diag['frames_received'])
    processed, dropped = int(diag['frames_processed']), int(diag['frames_dropped'])
    # Reliable input on loopback; a frame can only be lost in the node's DDS history (keep last
    # 5) when its executor stalls for 5 frames on a loaded machine.
    assert SCENE_FRAMES - 2 <= received <= SCENE_FRAMES, diag
    # Every received frame was either processed or replaced by a newer one before processing
    # (each image found its camera_info by stamp).
    assert processed + dropped == received and int(diag['frames_unmatched']) == 0, diag
    assert processed > 0 and int(diag['frames_rejected']) == 0
    assert int(diag['poses_published']) == len(recorded['poses'])
    assert all(p['frame_id'] == 'map' for p in recorded['poses'])
    gt_stamps = {f['stamp_ns'] for f in gt['frames']}
    assert all(p['stamp_ns'] in gt_stamps for p in recorded['poses'])


@NEEDS_REAL_MODEL
def test_player_node_recorder_accuracy(played, model_path, scene_dir):
    """The node's poses are the Relocalizer's poses (same image, K, settings and seed, run here
    in-process), and they localize the synthetic sequence."""
    import torch

    from dsac_ros.relocalizer import Relocalizer, RelocalizerConfig
    from dsac_ros.ros.parameters import NodeSettings

    gt, recorded, _ = played
    summary = summarize_recording(gt, recorded)
    assert summary.poses_matched >= SCENE_FRAMES // 2, summary
    torch.set_num_threads(1)
    settings = NodeSettings(**{k: v for k, v in NODE_TEST_PARAMS.items()
                               if k != 'input_reliability'})
    reference = Relocalizer.from_checkpoint(model_path, RelocalizerConfig(device='cpu'))
    reference.set_estimator_config(settings.estimator_config(reference.model_estimator_config))
    frames_by_name = {f.name: f for f in load_frames(scene_dir, 'test')}
    name_by_stamp = {f['stamp_ns']: f['name'] for f in gt['frames']}
    rot, trans = [], []
    for pose in recorded['poses']:
        frame = frames_by_name[name_by_stamp[pose['stamp_ns']]]
        expected = reference.localize(frame.image_rgb, frame.K)
        assert expected.valid
        r, t = pose_errors_np(np.asarray([pose['T_wc']]), expected.T_wc[None], 'T_wc')
        rot.append(r[0])
        trans.append(t[0])
    # Same computation in another process: equal up to float noise on nearly all frames.
    agree = (np.asarray(rot) < 0.05) & (np.asarray(trans) < 1e-3)
    assert agree.mean() >= 0.9, (rot, trans)
    # A trained model localizes the sequence (the exact numbers are the model's: see dsac_demo).
    assert summary.median_translation_m < 0.15 and summary.median_rotation_deg < 5.0, summary


def test_pose_errors_reference():
    """The accuracy metric itself, against OpenCV's Rodrigues angle."""
    import cv2

    rng = np.random.default_rng(0)
    rvec = rng.normal(size=3) * 0.1
    T_gt = np.eye(4)
    T_est = np.eye(4)
    T_est[:3, :3] = cv2.Rodrigues(rvec)[0]
    T_est[:3, 3] = [0.03, 0.0, 0.04]
    rot, trans = pose_errors_np(T_est[None], T_gt[None], 'T_wc')
    np.testing.assert_allclose(rot, np.degrees(np.linalg.norm(rvec)), rtol=1e-9)
    np.testing.assert_allclose(trans, 0.05)


# -- RGB-D: a depth topic from another process ----------------------------------------------

DEPTH_TOPIC = '/camera/aligned_depth_to_color/image_raw'


def test_rgbd_node_pairs_depth_by_stamp_and_falls_back_with_reasons(ros_env, model_path,
                                                                    scene_dir, tmp_path):
    """The node in its own process on a depth topic: 16UC1 / 32FC1 depth (another resolution,
    a stamp within the tolerance) gives RGB-D poses; a frame without depth of its stamp, with
    a depth image of the wrong encoding or size, or with all depth invalid, is localized with
    RGB, and each reason is counted in /diagnostics and logged."""
    frame = load_frames(scene_dir, 'test', load_depth=True)[0]
    env = own_domain(ros_env)
    with RosProcesses(env, tmp_path) as procs:
        node = procs.start('node', node_command(PARAMS_FILE, {
            'model_path': str(model_path), **NODE_TEST_PARAMS, 'depth_topic': DEPTH_TOPIC,
            'depth_stamp_tolerance_s': 0.01, 'depth_wait_s': 0.3}))
        client = RosClient(env)
        depth_pub = client.node.create_publisher(
            Image, DEPTH_TOPIC, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        image, info = _good(frame)
        height, width = frame.image_rgb.shape[:2]

        def send(depth_msg, offset_ms: float = 0.0) -> int:
            before = client.handled()
            stamp = time.time_ns()
            messages.ns_to_stamp(stamp, image.header.stamp)
            info.header.stamp = image.header.stamp
            if depth_msg is not None:
                messages.ns_to_stamp(stamp + int(offset_ms * 1e6), depth_msg.header.stamp)
                depth_pub.publish(depth_msg)
            client.info_pub.publish(info)
            client.image_pub.publish(image)
            assert wait_for(lambda: client.handled() > before, 30.0), client.last_diag()
            return stamp

        try:
            assert wait_for(lambda: depth_pub.get_subscription_count() > 0
                            and client.wait_node(1.0), 60.0, children=[node]), node.log()
            mm = messages.depth_to_image_msg(frame.depth_m, '16UC1', 'camera_optical')
            half = cv2.resize(frame.depth_m, (width // 2, height // 2),
                              interpolation=cv2.INTER_NEAREST)
            metres = messages.depth_to_image_msg(half, '32FC1', 'camera_optical')
            rgbd_stamps = [send(mm), send(metres, offset_ms=5.0)]
            assert client.last_diag()['last_mode'] == 'rgbd', client.last_diag()
            assert client.counter('depth_received') >= 2
            send(None)  # no depth at all
            send(mm, offset_ms=50.0)  # depth of another frame (outside 10 ms)
            assert client.last_diag()['last_mode'] == 'rgb'
            assert client.counter('depth_fallback_no_depth') == 2, client.last_diag()
            wrong_encoding = messages.rgb_to_image_msg(frame.image_rgb)
            wrong_size = messages.depth_to_image_msg(frame.depth_m[:, : width // 2], '16UC1')
            all_invalid = messages.depth_to_image_msg(np.zeros_like(frame.depth_m), '16UC1')
            for msg in (wrong_encoding, wrong_size, all_invalid):
                send(msg)
            d = client.last_diag()
            assert float(d['depth_fallback_bad_depth']) == 2 and d['last_mode'] == 'rgb', d
            assert float(d['depth_fallback_invalid_depth']) == 1, d
            assert float(d['frames_processed']) == 7 and float(d['frames_rejected']) == 0, d
            if HAS_REAL_MODEL:
                assert float(d['poses_rgbd']) == 2 and float(d['poses_rgb']) == 5, d
                assert wait_for(lambda: len(client.poses) >= 7, 10.0)
                by_stamp = {messages.stamp_to_ns(p.header.stamp): p for p in client.poses}
                for stamp in rgbd_stamps:
                    T = messages.pose_msg_to_matrix(by_stamp[stamp].pose)
                    deg, m = pose_errors_np(T[None], frame.T_wc[None], convention='T_wc')
                    assert float(deg[0]) < 2.0 and float(m[0]) < 0.05, (deg, m)
        finally:
            client.close()
        assert procs.stop(node) == 0
    log = node.log()
    assert 'RGB-D' in log and 'no depth on ' + DEPTH_TOPIC in log, log[-3000:]
    assert 'depth not usable' in log and 'rgb8' in log and 'registered' in log, log[-3000:]
