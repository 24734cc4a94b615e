"""The dsac_demo command end to end (short sequence), its failure path and its Ctrl-C path."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import cv2
import psutil
import pytest
from test_ros_node import HAS_REAL_MODEL, model_path  # noqa: F401

DEMO = [sys.executable, '-m', 'dsac_ros.cli.demo']


def test_demo_runs_and_reports(ros_env, model_path, tmp_path):  # noqa: F811
    out = tmp_path / 'demo_out'
    result = subprocess.run(
        DEMO + ['--out', str(out), '--frames', '24', '--rate', '5', '--num-threads', '1',
                '--model', str(model_path)],
        env=ros_env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'within 5 cm / 5 deg' in result.stdout and 'latency' in result.stdout
    summary = json.loads((out / 'summary.json').read_text())
    accuracy = summary['accuracy']
    assert accuracy['frames_published'] == 24
    diag = summary['node_diagnostics']
    received = int(diag['frames_received'])
    assert 22 <= received <= 24  # reliable on loopback; see test_player_node_recorder_pipeline
    # Every frame is processed, dropped for a newer one or left without a camera_info; one may
    # still be in the worker or waiting for its camera_info when the last /diagnostics left
    # (seen once in CI: 23 received, 14 processed + 8 dropped).
    accounted = sum(int(diag[k]) for k in ('frames_processed', 'frames_dropped',
                                           'frames_unmatched'))
    assert received - 1 <= accounted <= received, diag
    image = cv2.imread(str(out / 'trajectory_top_view.png'))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 200
    for name in ('gt.json', 'poses.json', 'logs/node.log', 'logs/player.log'):
        assert (out / name).is_file(), name
    if HAS_REAL_MODEL:  # a trained model localizes; its exact accuracy is what the demo prints
        assert accuracy['poses_matched'] >= 12, accuracy
        assert accuracy['median_translation_m'] < 0.15, accuracy
        assert accuracy['median_rotation_deg'] < 5.0, accuracy
        assert accuracy['median_latency_ms'] > 0.0


def test_demo_missing_model_fails_clearly(ros_env, tmp_path):
    result = subprocess.run(DEMO + ['--out', str(tmp_path), '--model', str(tmp_path / 'no.pt')],
                            env=ros_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'no.pt' in result.stderr and 'does not exist' in result.stderr


@pytest.mark.timeout(120)
def test_demo_ctrl_c_stops_every_child(ros_env, model_path, tmp_path):  # noqa: F811
    """Started as a shell starts a background job (SIGINT ignored, which exec keeps), the demo
    still stops on SIGINT: the harder case, and the plain one takes the same path after it."""
    out = tmp_path / 'demo_out'
    demo = subprocess.Popen(
        DEMO + ['--out', str(out), '--frames', '60', '--rate', '5', '--num-threads', '1',
                '--model', str(model_path)], env=ros_env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        player_log = out / 'logs' / 'player.log'
        deadline = time.monotonic() + 90
        while not player_log.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert player_log.exists()
        time.sleep(3.0)  # node, recorder and player all running
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 3
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, err
    assert 'interrupted' in err
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_rgbd_report_side_by_side_on_common_frames(tmp_path):
    """The --depth report from recordings (no ROS): each node's poses, then the frames both
    localized."""
    import numpy as np

    from dsac_ros.demo.run import DemoResult, _compare_rgbd, format_report
    from dsac_ros.demo.trajectory import summarize_recording

    def shifted(dx: float) -> list:
        T = np.eye(4)
        T[0, 3] = dx
        return T.tolist()

    gt = {'frames': [{'stamp_ns': s, 'name': f'f{s}', 'T_wc': shifted(0.0)} for s in range(6)]}
    rgb = {'poses': [{'stamp_ns': s, 'receive_ns': s + 10**8, 'T_wc': shifted(0.1)}
                     for s in (0, 1, 2)], 'diagnostics': {}}
    rgbd = {'poses': [{'stamp_ns': s, 'receive_ns': s + 10**8, 'T_wc': shifted(0.01)}
                      for s in (1, 2, 3, 4)], 'diagnostics': {'poses_rgbd': '4'}}
    comparison = _compare_rgbd(gt, rgb, rgbd, tmp_path, 0.01)
    assert comparison.accuracy.poses_matched == 4 and comparison.plot_path.is_file()
    assert comparison.rgb_on_common.poses_matched == comparison.rgbd_on_common.poses_matched == 2
    assert comparison.rgbd_on_common.within_5cm_5deg_pct == 100.0
    assert comparison.rgb_on_common.within_5cm_5deg_pct == 0.0
    result = DemoResult(summarize_recording(gt, rgb), {}, tmp_path / 'p.png', 1.0, comparison)
    text = format_report(result)
    assert 'RGB vs RGB-D' in text and 'frames both localized' in text
    assert 'poses rgbd / rgb' in text and ': 4 / n/a' in text
