"""A camera faster than the node: 640x480 at 30 Hz for ~10 s, best-effort sensor QoS.

The node must keep only the newest frame: frames are dropped and counted, never queued, so
the image-stamp -> publish latency stays bounded (a queue would grow it by seconds), and its
memory does not grow.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
from test_ros_node import PARAMS_FILE, RosClient, model_path, own_domain, scene_dir  # noqa: F401

from dsac_ros.demo.player import load_frames
from dsac_ros.demo.processes import RosProcesses, node_command, rss_bytes
from dsac_ros.ros import messages

RATE_HZ = 30.0  # several times the node's rate on CPU; 60 Hz starved the 2-core CI
WARMUP_S = 2.0
FLOOD_S = 8.0


def test_flood_drops_frames_without_queueing_or_growing(ros_env, model_path,  # noqa: F811
                                                        scene_dir, tmp_path):  # noqa: F811
    frames = load_frames(scene_dir, 'test', resize=(640, 480))
    images = [messages.rgb_to_image_msg(f.image_rgb, 'camera') for f in frames]
    infos = [messages.intrinsics_to_camera_info(f.K, 640, 480, 'camera') for f in frames]
    env = own_domain(ros_env)
    with RosProcesses(env, tmp_path) as procs:
        node = procs.start('node', node_command(PARAMS_FILE, {
            'model_path': str(model_path), 'num_threads': 1, 'diagnostics_period_s': 0.25,
            'num_hypotheses': 64}))  # default input QoS: best effort, depth 1
        client = RosClient(env, reliable=False)
        try:
            assert client.wait_node(60.0, children=[node]), node.log()
            start = time.monotonic()
            sent = 0
            rss_warm = None
            while time.monotonic() - start < WARMUP_S + FLOOD_S:
                due = start + sent / RATE_HZ
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                client.publish(images[sent % len(images)], infos[sent % len(infos)])
                sent += 1
                if rss_warm is None and time.monotonic() - start >= WARMUP_S:
                    rss_warm = rss_bytes(node.process.pid)
                    diag_warm = len(client.diagnostics)
            rss_end = rss_bytes(node.process.pid)
            # Let the node finish its last frame and report once more.
            time.sleep(1.0)
            final = client.last_diag()
            history = list(client.diagnostics)[diag_warm:]
            assert node.returncode is None, node.log()
        finally:
            client.close()
        assert procs.stop(node) == 0, node.log()

    print(f'flood: sent {sent}, node {final}, RSS warm {rss_warm / 2**20:.1f} MiB -> end '
          f'{rss_end / 2**20:.1f} MiB')
    received = int(final['frames_received'])
    processed, dropped = int(final['frames_processed']), int(final['frames_dropped'])
    # Best effort with depth 1 lets DDS itself drop frames while the node's process is busy
    # (2-core CI: 62 % of 60 Hz frames arrived); those are dropped too, never queued. What must
    # hold is that the subscription keeps receiving under load.
    assert received >= 0.25 * sent, (sent, final)
    assert dropped > 0 and processed < received, final
    # Newest-frame-only accounting: every frame processed, replaced, without its camera_info
    # (paired by stamp; best effort may lose one), or (at most one) pending.
    handled = processed + dropped + int(final['frames_rejected']) + int(final['frames_unmatched'])
    assert received - 1 <= handled <= received
    # Bounded latency: a queue of 30 Hz frames behind a slower model would add seconds.
    latencies = [float(d['stamp_to_publish_ms']) for d in history if 'stamp_to_publish_ms' in d]
    print(f'flood: stamp -> publish after warm-up: max {max(latencies):.0f} ms, median '
          f'{np.median(latencies):.0f} ms')
    assert latencies and max(latencies) < 1500.0, latencies
    # No memory growth after warm-up (a frame queue would hold ~1 MB per frame).
    assert rss_end - rss_warm < 40 * 2**20, (rss_warm, rss_end)


def test_resized_frames_keep_the_camera_geometry(scene_dir):  # noqa: F811
    """The flood's 640x480 frames: K scaled with pixel centres kept (OpenCV reference)."""
    small = load_frames(scene_dir, 'test')[0]
    big = load_frames(scene_dir, 'test', resize=(640, 480))[0]
    point = np.array([[0.3, -0.2, 2.0]])
    p_small, _ = cv2.projectPoints(point, np.zeros(3), np.zeros(3), small.K, None)
    p_big, _ = cv2.projectPoints(point, np.zeros(3), np.zeros(3), big.K, None)
    scale = 640 / small.image_rgb.shape[1]
    assert 480 / small.image_rgb.shape[0] == scale
    np.testing.assert_allclose((p_big.ravel() + 0.5) / scale - 0.5, p_small.ravel(), atol=1e-9)
    assert big.image_rgb.shape == (480, 640, 3)
