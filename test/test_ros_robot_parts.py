"""The robot-side pieces of the node: TF input (own buffer; tf2_ros where installed), robot pose
and covariance, the jump gate, image <-> camera_info pairing by stamp inside the node, the
lifecycle variant driven from another process, and --help."""

from __future__ import annotations

import threading
import time

from builtin_interfaces.msg import Time
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from test_ros_node import (  # noqa: F401
    NODE_TEST_PARAMS,
    PARAMS_FILE,
    RosClient,
    _good,
    _KnownPoseRelocalizer,
    model_path,
    own_domain,
    scene_dir,
)
from tf2_msgs.msg import TFMessage

from dsac_ros.demo.player import load_frames
from dsac_ros.demo.processes import RosProcesses, module_command, wait_for
from dsac_ros.geometry.tf_buffer import ConnectivityError, ExtrapolationError
from dsac_ros.geometry.transforms import move_pose_covariance_np, pose_to_matrix_np
from dsac_ros.ros import messages
from dsac_ros.ros.robot_pose import GateLimits, JumpGate, robot_pose, yaw_of
from dsac_ros.ros.tf_broadcaster import TF_QOS, TF_STATIC_QOS
from dsac_ros.ros.tf_listener import (
    BuiltinTransformSource,
    Tf2RosTransformSource,
    tf2_ros_available,
)

S = 1_000_000_000


def _T(t, yaw=0.0):
    return pose_to_matrix_np(t, [0, 0, np.sin(yaw / 2), np.cos(yaw / 2)])


# -- pure parts -------------------------------------------------------------------------------

def test_robot_pose_composes_rep105():
    T_map_camera = _T([2.0, 1.0, 0.5], 0.7)
    T_camera_base = _T([-0.1, 0.3, 0.2], -1.2)
    T_odom_base = _T([5.0, -2.0, 0.0], 0.4)
    cov = np.diag([1e-4, 2e-4, 3e-4, 1e-5, 2e-5, 3e-5])
    r = robot_pose(T_map_camera, cov, T_camera_base, T_odom_base)
    np.testing.assert_allclose(r.T_map_base, T_map_camera @ T_camera_base)
    np.testing.assert_allclose(r.T_map_odom @ T_odom_base, r.T_map_base, atol=1e-12)
    np.testing.assert_allclose(r.covariance, move_pose_covariance_np(
        cov, r.T_map_base[:3, 3] - T_map_camera[:3, 3]))
    assert robot_pose(T_map_camera, cov, T_camera_base).T_map_odom is None
    assert yaw_of(_T([0, 0, 0], 0.5)) == pytest.approx(0.5)


def test_jump_gate():
    gate, limits = JumpGate(), GateLimits(max_jump_m=0.5, max_jump_deg=20.0, min_inliers=300,
                                          lost_timeout_ns=5 * S)
    assert gate.lost(0, limits)
    gate.accept(10 * S, {'map_to_odom': _T([0, 0, 0])})
    assert not gate.lost(11 * S, limits)
    assert gate.check(11 * S, 'map_to_odom', _T([0.2, 0, 0]), 100, limits) is None
    assert 'jumped 2.00 m' in gate.check(11 * S, 'map_to_odom', _T([2, 0, 0]), 100, limits)
    assert 'deg' in gate.check(11 * S, 'map_to_odom', _T([0, 0, 0], 1.0), 100, limits)
    assert gate.check(11 * S, 'map_to_odom', _T([2, 0, 0]), 300, limits) is None  # many inliers
    assert gate.check(11 * S, 'camera', _T([9, 0, 0]), 100, limits) is None  # other reference
    assert gate.check(16 * S, 'map_to_odom', _T([2, 0, 0]), 100, limits) is None  # lost: open
    off = GateLimits(max_jump_m=0.0)
    assert gate.check(11 * S, 'map_to_odom', _T([2, 0, 0]), 100, off) is None


# -- TF input ---------------------------------------------------------------------------------

@pytest.fixture
def ros_context(ros_env):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(own_domain(ros_env)['ROS_DOMAIN_ID']))
    yield context
    rclpy.shutdown(context=context)


@pytest.mark.parametrize('backend', ['builtin', 'tf2_ros'])
def test_transform_source_interpolates_waits_and_explains(ros_context, backend):
    """The node's TF input: static + 10 Hz odometry from another node (loopback DDS),
    interpolated at a stamp, waited for while odometry catches up, clear errors."""
    if backend == 'tf2_ros' and not tf2_ros_available():
        pytest.skip('tf2_ros is not installed (pip environment); the builtin buffer serves')
    cls = BuiltinTransformSource if backend == 'builtin' else Tf2RosTransformSource
    node = rclpy.create_node('tf_user', context=ros_context)
    robot = rclpy.create_node('tf_robot', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(robot)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    source = cls(node, cache_time_s=10.0)
    tf_pub = robot.create_publisher(TFMessage, '/tf', TF_QOS)
    static_pub = robot.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
    T_base_cam = _T([0.2, 0.0, 0.3], 0.3)

    def send(stamp_ns, x):
        tf_pub.publish(TFMessage(transforms=[messages.transform_stamped(
            _T([x, 0.0, 0.0], x), _stamp(stamp_ns), 'odom', 'base_link')]))

    try:
        static_pub.publish(TFMessage(transforms=[messages.transform_stamped(
            T_base_cam, _stamp(0), 'base_link', 'cam')]))
        assert wait_for(lambda: tf_pub.get_subscription_count() > 0, 10.0)
        for k in range(3):
            send(100 * S + k * S // 10, 0.1 * k)
        expected = _T([0.15, 0, 0], 0.15) @ T_base_cam
        assert wait_for(lambda: _try(source, 'odom', 'cam', 100 * S + S * 15 // 100), 10.0)
        np.testing.assert_allclose(source.lookup('odom', 'cam', 100 * S + S * 15 // 100),
                                   expected, atol=1e-9)
        # A stamp odometry has not reached yet: the lookup waits for it.
        later = threading.Timer(0.3, lambda: send(100 * S + 3 * S // 10, 0.3))
        later.start()
        T = source.lookup('odom', 'base_link', 100 * S + S * 25 // 100, timeout_s=5.0)
        np.testing.assert_allclose(T[:3, 3], [0.25, 0, 0], atol=1e-9)
        with pytest.raises(ExtrapolationError):
            source.lookup('odom', 'base_link', 101 * S, timeout_s=0.2)
        start = time.monotonic()
        with pytest.raises(ConnectivityError):
            source.lookup('odom', 'nowhere', 100 * S, timeout_s=5.0)
        assert time.monotonic() - start < 4.0  # unknown frames are not waited for
    finally:
        source.close()
        executor.shutdown()
        spinner.join(5.0)
        node.destroy_node()
        robot.destroy_node()


def _stamp(ns: int) -> Time:
    t = Time()
    messages.ns_to_stamp(ns, t)
    return t


def _try(source, target, frame, stamp) -> bool:
    try:
        source.lookup(target, frame, stamp)
    except LookupError:
        return False
    return True


# -- the node ---------------------------------------------------------------------------------

class _RecordingRelocalizer(_KnownPoseRelocalizer):
    """Records which K arrived with which image (the image's first pixel is its index)."""

    def __init__(self) -> None:
        super().__init__(inliers=500)
        self.seen: list[tuple[int, float]] = []

    def localize(self, image, K):
        self.seen.append((int(image[0, 0, 0]), float(K[0, 0])))
        return super().localize(image, K)


def test_camera_info_changes_land_on_their_own_frame(ros_env, scene_dir):  # noqa: F811
    """Each image carries a calibration of its own; the info arrives after its image (arrival
    pairing gave each image the previous frame's K). Paired by stamp, every K is right."""
    from dsac_ros.ros.node import RelocalizeNode

    env = own_domain(ros_env)
    client = RosClient(env)
    reloc = _RecordingRelocalizer()
    node = RelocalizeNode(relocalizer=reloc, context=client.context, parameter_overrides=[
        Parameter('input_reliability', value='reliable'), Parameter('tf_mode', value='none'),
        Parameter('base_frame', value=''), Parameter('diagnostics_period_s', value=0.1)])
    client.executor.add_node(node)
    frame = load_frames(scene_dir, 'test')[0]
    try:
        assert wait_for(lambda: client.info_pub.get_subscription_count() > 0, 10.0)
        for k in range(5):
            image, info = _good(frame)
            rgb = frame.image_rgb.copy()
            rgb[0, 0, 0] = k
            image = messages.rgb_to_image_msg(rgb, 'camera_optical')
            K = frame.K.copy()
            K[0, 0] += 10.0 * k
            info = messages.intrinsics_to_camera_info(K, rgb.shape[1], rgb.shape[0])
            stamp_ns = time.time_ns()
            messages.ns_to_stamp(stamp_ns, image.header.stamp)
            info.header.stamp = image.header.stamp
            before = len(reloc.seen)
            client.image_pub.publish(image)  # the image first, its calibration after
            time.sleep(0.05)
            client.info_pub.publish(info)
            assert wait_for(lambda b=before: len(reloc.seen) > b, 10.0), client.last_diag()
        assert reloc.seen == [(k, frame.K[0, 0] + 10.0 * k) for k in range(5)]
        assert wait_for(lambda: client.counter('frames_processed') == 5, 5.0)
        assert client.counter('frames_unmatched') == 0
    finally:
        client.executor.remove_node(node)
        node.destroy_node()
        client.close()


def test_lifecycle_transitions_from_another_process(ros_env, model_path, tmp_path):  # noqa: F811
    """configure loads the model, activate subscribes, deactivate unsubscribes, cleanup and
    shutdown; driven through lifecycle_msgs services as nav2's lifecycle_manager does."""
    env = own_domain(ros_env)
    params = {'model_path': str(model_path), **NODE_TEST_PARAMS}
    command = module_command('dsac_ros.ros.lifecycle_node', '--ros-args', '--params-file',
                             str(PARAMS_FILE))
    for name, value in params.items():
        value = {True: 'true', False: 'false', '': "''"}.get(value, value) \
            if isinstance(value, (bool, str)) else value
        command += ['-p', f'{name}:={value}']
    with RosProcesses(env, tmp_path) as procs:
        node = procs.start('lifecycle', command)
        client = RosClient(env)
        change = client.node.create_client(ChangeState, '/relocalize_node/change_state')
        get = client.node.create_client(GetState, '/relocalize_node/get_state')

        def call(cli, request):
            assert cli.wait_for_service(30.0), node.log()
            future = cli.call_async(request)
            assert wait_for(future.done, 60.0), node.log()
            return future.result()

        def transition(tid):
            return call(change, ChangeState.Request(transition=Transition(id=tid))).success

        def state():
            return call(get, GetState.Request()).current_state.id

        def image_subscribers():
            return client.node.count_subscribers('/camera/image_raw')

        try:
            assert state() == State.PRIMARY_STATE_UNCONFIGURED
            assert image_subscribers() == 0
            assert transition(Transition.TRANSITION_CONFIGURE), node.log()
            assert state() == State.PRIMARY_STATE_INACTIVE and image_subscribers() == 0
            assert transition(Transition.TRANSITION_ACTIVATE)
            assert state() == State.PRIMARY_STATE_ACTIVE
            assert wait_for(lambda: image_subscribers() == 1, 10.0)
            assert wait_for(lambda: bool(client.last_diag()), 10.0)  # diagnostics flow
            assert transition(Transition.TRANSITION_DEACTIVATE)
            assert wait_for(lambda: image_subscribers() == 0, 10.0)
            assert transition(Transition.TRANSITION_CLEANUP)
            assert state() == State.PRIMARY_STATE_UNCONFIGURED
            assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
            assert state() == State.PRIMARY_STATE_FINALIZED
            assert node.returncode is None
        finally:
            client.close()
        assert procs.stop(node) == 0, node.log()
    assert 'loaded model' in node.log()


def test_help_prints_parameters_and_exits(capsys):
    """``relocalize_node --help`` (main's argument check, before rclpy.init) prints usage,
    topics, frames, the service and every parameter with its range and default."""
    from dsac_ros.ros import lifecycle_node, node

    assert node.main(['--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: relocalize_node')
    for needle in ('tf_mode (str, default', 'one of map_to_odom|map_to_camera|none',
                   'num_hypotheses (int, default 256 in [1, 4096])', '~/relocalize',
                   '/initialpose', 'map -> odom', 'use_sim_time'):
        assert needle in out, needle
    assert not rclpy.ok()  # no ROS context was started
    assert lifecycle_node.main(['-h', '--ros-args', '-p', 'x:=1']) == 0
    assert capsys.readouterr().out.startswith('usage: relocalize_lifecycle_node')
    assert node.wants_help(['--ros-args', '-p', 'a:=--help']) is False


def test_on_request_only_for_a_camera_without_a_robot(ros_env, scene_dir):  # noqa: F811
    """continuous false: frames are counted, not localized, until ~/relocalize; a camera
    without base_frame gets its camera pose in the answer and no /initialpose."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.executors import MultiThreadedExecutor
    from std_srvs.srv import Trigger

    from dsac_ros.ros.node import RelocalizeNode

    env = own_domain(ros_env)
    client = RosClient(env)
    reloc = _RecordingRelocalizer()
    node = RelocalizeNode(relocalizer=reloc, context=client.context, parameter_overrides=[
        Parameter('input_reliability', value='reliable'), Parameter('tf_mode', value='none'),
        Parameter('base_frame', value=''), Parameter('diagnostics_period_s', value=0.1),
        Parameter('continuous', value=False), Parameter('relocalize_frames', value=2)])
    executor = MultiThreadedExecutor(num_threads=2, context=client.context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    initialposes = []
    client.node.create_subscription(PoseWithCovarianceStamped, '/initialpose',
                                    initialposes.append, 10)
    trigger = client.node.create_client(Trigger, '/relocalize_node/relocalize')
    frame = load_frames(scene_dir, 'test')[0]
    try:
        assert wait_for(lambda: client.image_pub.get_subscription_count() > 0, 10.0)
        client.publish_and_wait(*_good(frame))
        assert client.counter('frames_not_requested') == 1 and not reloc.seen
        assert trigger.wait_for_service(10.0)
        future = trigger.call_async(Trigger.Request())
        for _ in range(20):  # frames until the request is answered
            if future.done():
                break
            client.publish(*_good(frame))
            time.sleep(0.1)
        assert wait_for(future.done, 10.0)
        answer = future.result()
        assert answer.success and 'the camera (no base_frame)' in answer.message, answer.message
        assert '500 inliers' in answer.message and len(reloc.seen) >= 2
        assert not initialposes
    finally:
        executor.shutdown()
        spinner.join(5.0)
        node.destroy_node()
        client.close()
