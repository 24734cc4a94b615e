"""relocalize_node on a robot (REP-105), real processes on loopback DDS, all under sim time.

One node process (use_sim_time) serves the whole module, driven in turn by:
1. a robot simulator process (`dsac_ros.demo.robot_sim`): /clock from 1000 s, a static
   base_link -> camera optical frame extrinsic (not the identity), odom -> base_link at 50 Hz
   with drift, images + camera_info at 1 Hz; a ~/relocalize request while it drives;
2. nothing (continuous off): a ~/relocalize request must fail with a reason, diagnostics STALE;
3. `dsac_replay` of a bag written by `write_scene_bag` (robot TF, no map -> odom, from 2000 s)
   with /clock.
The checker is this test process: it composes map -> odom (the node's) -> base_link -> camera
(the robot's) from /tf and compares with ground truth.
"""

from __future__ import annotations

import math
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rosgraph_msgs.msg import Clock
from std_srvs.srv import Trigger
from test_ros_node import (  # noqa: F401
    HAS_REAL_MODEL,
    NEEDS_REAL_MODEL,
    PARAMS_FILE,
    RosClient,
    model_path,
    own_domain,
    scene_dir,
)
from tf2_msgs.msg import TFMessage

from dsac_ros.data.bag_writer import SceneBagTopics, map_to_odom, write_scene_bag
from dsac_ros.demo.player import load_frames
from dsac_ros.demo.processes import RosProcesses, module_command, node_command, wait_for
from dsac_ros.demo.trajectory import load_json
from dsac_ros.geometry.tf_buffer import TfBuffer
from dsac_ros.geometry.transforms import pose_errors_np
from dsac_ros.ros import messages
from dsac_ros.ros.robot_pose import yaw_of
from dsac_ros.ros.tf_broadcaster import TF_QOS, TF_STATIC_QOS

TOLERANCE_S = 0.2  # transform_tolerance_s: map -> odom of a frame is stamped frame + this
SIM_FRAMES = 8
BAG_FRAMES = 4
BAG_START_S = 2000.0
ROBOT_PARAMS = {
    'num_threads': 1, 'input_reliability': 'reliable', 'diagnostics_period_s': 0.2,
    'num_hypotheses': 64, 'use_sim_time': True, 'transform_tolerance_s': TOLERANCE_S,
    'tf_publish_rate_hz': 5.0, 'tf_timeout_s': 0.5, 'relocalize_frames': 2,
    'relocalize_timeout_s': 2.0, 'stale_timeout_s': 1.0,
}


class RobotChecker(RosClient):
    """In-test participant (`RosClient`, which also keeps /camera_pose and /diagnostics values)
    that records /tf, /tf_static, the base pose, /initialpose, full diagnostics statuses and
    /clock; calls ~/relocalize and sets parameters."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        n = self.node
        self.tf: list = []  # (static, TransformStamped)
        self.base_poses: list[PoseWithCovarianceStamped] = []
        self.initialposes: list[PoseWithCovarianceStamped] = []
        # (stamp ns, level, message, values)
        self.statuses: list[tuple[int, bytes, str, dict[str, str]]] = []
        self.clock_ns = 0
        n.create_subscription(TFMessage, '/tf', self._on_tf(False), TF_QOS)
        n.create_subscription(TFMessage, '/tf_static', self._on_tf(True), TF_STATIC_QOS)
        n.create_subscription(PoseWithCovarianceStamped, '/dsac_pose',
                              self._store(self.base_poses), 50)
        n.create_subscription(PoseWithCovarianceStamped, '/initialpose',
                              self._store(self.initialposes), 50)
        n.create_subscription(DiagnosticArray, '/diagnostics', self._on_status, 50)
        n.create_subscription(Clock, '/clock', self._on_clock, 10)
        self.trigger_client = n.create_client(Trigger, '/relocalize_node/relocalize')
        self.params = AsyncParameterClient(n, 'relocalize_node')

    def _on_tf(self, static: bool):
        def callback(msg: TFMessage) -> None:
            with self.lock:
                self.tf.extend((static, t) for t in msg.transforms)
        return callback

    def _on_status(self, msg: DiagnosticArray) -> None:
        status = msg.status[0]
        with self.lock:
            self.statuses.append((messages.stamp_to_ns(msg.header.stamp), status.level,
                                  status.message, messages.diagnostic_values(msg)))

    def _on_clock(self, msg: Clock) -> None:
        self.clock_ns = messages.stamp_to_ns(msg.clock)

    def trigger(self, timeout_s: float) -> Trigger.Response:
        assert self.trigger_client.wait_for_service(10.0)
        future = self.trigger_client.call_async(Trigger.Request())
        assert wait_for(future.done, timeout_s), 'no answer from ~/relocalize'
        return future.result()

    def set(self, name: str, value) -> None:
        assert self.params.wait_for_services(10.0)
        future = self.params.set_parameters([Parameter(name, value=value)])
        assert wait_for(future.done, 10.0) and future.result().results[0].successful

    def node_tf(self, child: str = 'odom') -> list:
        with self.lock:
            return [t for static, t in self.tf if t.child_frame_id == child and not static]

    def robot_tf(self) -> TfBuffer:
        """The robot's transforms (not the node's map -> odom) as a TF buffer."""
        tree = TfBuffer()
        with self.lock:
            for static, t in self.tf:
                if t.header.frame_id == 'map':
                    continue
                tr, q = t.transform.translation, t.transform.rotation
                tree.set_transform(t.header.frame_id, t.child_frame_id,
                                   messages.stamp_to_ns(t.header.stamp), (tr.x, tr.y, tr.z),
                                   (q.x, q.y, q.z, q.w), static=static)
        return tree


def _settled(checker: RobotChecker, frames: int, may_lose: int = 1) -> bool:
    """The node received ``frames`` images in all (best effort may lose ``may_lose`` of them:
    in CI one replayed frame of 12 never arrived) and finished with every one it received.
    Called after the publisher has exited, so nothing more is on its way."""
    d = checker.last_diag()
    if not d or int(d['frames_received']) < frames - may_lose:
        return False
    done = sum(int(d[k]) for k in ('frames_processed', 'frames_dropped', 'frames_unmatched',
                                   'frames_not_requested', 'frames_rejected'))
    return done == int(d['frames_received'])


@pytest.fixture(scope='module')
def robot_run(ros_env, model_path, scene_dir, tmp_path_factory):  # noqa: F811
    """Runs the three phases of the module doc once; returns what the checker saw."""
    out = tmp_path_factory.mktemp('robot')
    env = own_domain(ros_env)
    run: dict = {}
    with RosProcesses(env, out) as procs:
        node = procs.start('node', node_command(
            PARAMS_FILE, {'model_path': str(model_path), **ROBOT_PARAMS}))
        # 1. The robot drives (it waits for the node and the checker to subscribe, so its
        # start-up overlaps the node's); a relocalization request while it drives.
        sim = procs.start('sim', module_command(
            # 1 Hz: a node slow on its first frames (CI: 3 of 8 handled at 2 Hz) still
            # localizes most frames and is still driving when the request comes.
            'dsac_ros.demo.robot_sim', str(scene_dir), '--rate', '1', '--max-frames',
            str(SIM_FRAMES), '--sim-time', '--clock-start', '1000',
            '--wait-tf-subscribers', '2', '--wait-timeout', '60', '--gt-out',
            str(out / 'gt.json')))
        checker = RobotChecker(env)
        try:
            assert wait_for(lambda: bool(checker.statuses), 60.0, children=[node]), node.log()
            if HAS_REAL_MODEL:
                assert wait_for(lambda: len(checker.base_poses) >= 2, 60.0,
                                children=[sim, node]), node.log()
                run['initialposes_before'] = len(checker.initialposes)
                run['trigger'] = checker.trigger(30.0)
            assert sim.process.wait(60) == 0, sim.log()
            assert wait_for(lambda: _settled(checker, SIM_FRAMES), 30.0), checker.last_diag()
            run['sim_diag'] = checker.last_diag()
            # 2. No images: on-request only, a request fails with its reason; STALE.
            checker.set('continuous', False)
            start = time.monotonic()
            run['no_image'] = checker.trigger(30.0)
            run['no_image_s'] = time.monotonic() - start
            assert wait_for(lambda: checker.statuses[-1][1] == DiagnosticStatus.STALE, 10.0)
            run['stale'] = checker.statuses[-1]
            # 3. A recorded bag with /clock.
            checker.set('continuous', True)
            bag = out / 'robot_bag'
            topics = SceneBagTopics(image='/camera/image_raw', camera_info='/camera/camera_info')
            write_scene_bag(scene_dir, bag, 'mcap', split='test', topics=topics, rate_hz=2.0,
                            start_time_s=BAG_START_S, write_depth=False,
                            max_frames=BAG_FRAMES, write_map_to_odom=False)
            replay = procs.start('replay', module_command(
                'dsac_ros.demo.replay', str(bag), '--wait', '/camera/image_raw:1', '/tf:2'))
            assert replay.process.wait(60) == 0, replay.log()
            assert wait_for(lambda: _settled(checker, SIM_FRAMES + BAG_FRAMES), 30.0), \
                checker.last_diag()
            time.sleep(0.5)  # the last map -> odom republished once more
        finally:
            checker.close()
        assert procs.stop(node) == 0, node.log()
    run.update(checker=checker, gt=load_json(out / 'gt.json'), log=node.log(),
               replay_log=replay.log(), scene_dir=scene_dir)
    return run


def _frame_errors(run, gt_by_stamp: dict[int, dict], camera_frame: str) -> np.ndarray:
    """One row per frame with a /camera_pose: the node's map -> odom on /tf for that frame
    (the one that composes with the robot's odom -> camera at the frame's stamp to the
    /camera_pose; its residual is column 0), its error vs the true drift, the error of the
    chain map -> odom -> base -> camera vs ground truth, of /camera_pose, and of raw odometry
    (metres, degrees)."""
    checker = run['checker']
    robot = checker.robot_tf()
    sent = [messages.transform_msg_to_matrix(t.transform) for t in checker.node_tf('odom')]
    rows = []
    for pose in checker.poses:
        stamp = messages.stamp_to_ns(pose.header.stamp)
        if stamp not in gt_by_stamp or not sent:
            continue
        # The checker's own /tf may stop short of the node's last frame (CI: the replayed
        # bag's odometry reached it up to 2001.0 s, the node localized 2001.5 s): that frame
        # cannot be checked here; the row count below still asserts enough frames.
        if not robot.can_transform('odom', camera_frame, stamp, int(1e9), extrapolate=False):
            continue
        gt = gt_by_stamp[stamp]
        T_camera_pose = messages.pose_msg_to_matrix(pose.pose)
        T_odom_camera = robot.lookup('odom', camera_frame, stamp, int(1e9), extrapolate=False)
        expected = T_camera_pose @ np.linalg.inv(T_odom_camera)
        T_map_odom = min(sent, key=lambda T: np.abs(T - expected).max())
        residual = float(np.abs(T_map_odom - expected).max())
        T_odom_base = robot.lookup('odom', 'base_link', stamp, int(1e9), extrapolate=False)
        errors = [pose_errors_np(np.asarray(a)[None], np.asarray(b)[None], 'T_wc') for a, b in (
            (T_map_odom, gt['T_map_odom']), (T_map_odom @ T_odom_camera, gt['T_wc']),
            (T_camera_pose, gt['T_wc']))]
        raw_m = float(pose_errors_np(T_odom_base[None], np.asarray(gt['T_map_base'])[None],
                                     'T_wc')[1][0]) if 'T_map_base' in gt else np.nan
        rows.append([residual] + [float(e[i][0]) for e in errors for i in (1, 0)] + [raw_m])
    return np.asarray(rows).reshape(-1, 8)


@NEEDS_REAL_MODEL
def test_map_to_odom_removes_the_drift(robot_run):
    gt = {f['stamp_ns']: f for f in robot_run['gt']['frames']}
    rows = _frame_errors(robot_run, gt, robot_run['gt']['frame_id'])
    assert len(rows) >= SIM_FRAMES // 2, robot_run['sim_diag']
    residual, odom_m, odom_deg, composed_m, composed_deg, camera_m, camera_deg, raw_m = rows.T
    print(f'\nmap -> odom vs true drift over {len(rows)} frames: median {np.median(odom_m):.3f} m'
          f' / {np.median(odom_deg):.2f} deg, max {odom_m.max():.3f} m; map->odom->base->camera'
          f' median {np.median(composed_m):.3f} m / {np.median(composed_deg):.2f} deg; '
          f'/camera_pose median {np.median(camera_m):.3f} m; raw odometry off by '
          f'{np.median(raw_m):.3f} m')
    # Every frame's map -> odom went out on /tf and composes with the robot's TF at the image
    # stamp to the camera pose: the chain is within the error of /camera_pose itself.
    assert residual.max() < 1e-6, residual
    np.testing.assert_allclose(composed_m, camera_m, atol=1e-4)
    np.testing.assert_allclose(composed_deg, camera_deg, atol=0.01)
    # Odometry alone is off by its drift; the chain through the node's map -> odom is not.
    assert np.median(raw_m) > 0.05
    assert np.median(composed_m) < 0.1 and np.median(composed_deg) < 5.0
    assert np.median(odom_m) < 0.15


def test_tf_tree_stays_a_tree_and_stamps_follow_the_clock(robot_run):
    checker = robot_run['checker']
    parents: dict[str, set[str]] = {}
    for _, t in checker.tf:
        parents.setdefault(t.child_frame_id, set()).add(t.header.frame_id)
    assert all(len(p) == 1 for p in parents.values()), parents
    assert parents.get('base_link') == {'odom'}
    # The robot's odometry stamps only go forward, as a real robot's do (the simulator once
    # sent each image's odometry sample after a later one).
    base_stamps = [messages.stamp_to_ns(t.header.stamp) for static, t in checker.tf
                   if not static and t.child_frame_id == 'base_link']
    assert base_stamps and all(a <= b for a, b in zip(base_stamps, base_stamps[1:]))
    # The node sends map -> odom and nothing else (no second parent for the camera).
    sent_by_node = {t.child_frame_id for _, t in checker.tf if t.header.frame_id == 'map'}
    assert sent_by_node <= {'odom'}
    # Sim time: diagnostics stamped 0 before /clock, then /clock's time, never the wall's.
    stamps = [s for s, *_ in checker.statuses if s > 0]
    assert stamps and all(1000e9 <= s < BAG_START_S * 1e9 + 60e9 for s in stamps)
    if HAS_REAL_MODEL:
        odom_stamps = [messages.stamp_to_ns(t.header.stamp) for t in checker.node_tf('odom')]
        assert len(odom_stamps) > SIM_FRAMES  # republished between frames
        assert all(1000e9 < s < BAG_START_S * 1e9 + 60e9 for s in odom_stamps)
    # Diagnostics say STALE once no frame arrives; latencies are on the sim clock.
    _, level, message, _ = robot_run['stale']
    assert level == DiagnosticStatus.STALE and 'no image on /camera/image_raw for' in message
    sim_diag = robot_run['sim_diag']
    assert int(sim_diag['frames_unmatched']) == 0
    assert abs(float(sim_diag['transport_ms'])) < 10_000  # sim clock vs sim stamps


@NEEDS_REAL_MODEL
def test_initialpose_only_on_request_with_the_base_yaw(robot_run):
    checker, response = robot_run['checker'], robot_run['trigger']
    assert response.success, response.message
    assert 'inliers' in response.message and 'base_link' in response.message
    assert robot_run['initialposes_before'] == 0
    (initial,) = checker.initialposes  # one request, one /initialpose; none per frame
    assert initial.header.frame_id == 'map'
    stamp = messages.stamp_to_ns(initial.header.stamp)
    frame = next(f for f in robot_run['gt']['frames'] if f['stamp_ns'] == stamp)
    yaw = yaw_of(messages.pose_msg_to_matrix(initial.pose.pose))
    base_yaw, optical_yaw = yaw_of(frame['T_map_base']), yaw_of(frame['T_wc'])
    assert abs(math.remainder(yaw - base_yaw, 2 * math.pi)) < math.radians(5.0)
    assert abs(math.remainder(yaw - optical_yaw, 2 * math.pi)) > math.radians(45.0)
    cov = np.reshape(initial.pose.covariance, (6, 6))
    assert cov[0, 0] > 0 and cov[1, 1] > 0 and cov[5, 5] > 0  # what AMCL reads


def test_relocalize_without_images_fails_with_a_reason(robot_run):
    response = robot_run['no_image']
    assert not response.success
    assert 'no image arrived within relocalize_timeout_s=2' in response.message, response.message
    assert '/camera/image_raw' in response.message
    assert robot_run['no_image_s'] < 2.0 + 10.0  # answered (timeout + the worker's poll)


@NEEDS_REAL_MODEL
def test_bag_replay_with_clock(robot_run):
    """The replayed bag (its TF: odom -> base_link -> camera_link -> optical) drives the node
    like the simulator: map -> odom on /tf against the bag's true drift."""
    start = int(BAG_START_S * 1e9)
    gt = {start + int(i * 0.5e9): {'T_map_odom': map_to_odom(i * 0.5), 'T_wc': frame.T_wc}
          for i, frame in enumerate(load_frames(robot_run['scene_dir'], 'test')[:BAG_FRAMES])}
    rows = _frame_errors(robot_run, gt, SceneBagTopics().camera_frame)
    assert len(rows) >= BAG_FRAMES // 2, robot_run['log'][-3000:]
    residual, odom_m, _, composed_m, _, camera_m, _, _ = rows.T
    print(f'\nreplay: map -> odom vs true drift median {np.median(odom_m):.3f} m over '
          f'{len(rows)} frames')
    assert residual.max() < 1e-6
    np.testing.assert_allclose(composed_m, camera_m, atol=1e-4)
    assert np.median(odom_m) < 0.15
    checker = robot_run['checker']
    base = [p for p in checker.base_poses if messages.stamp_to_ns(p.header.stamp) in gt]
    assert base and all(p.header.frame_id == 'map' for p in base)
    assert 'messages from' in robot_run['replay_log']
