"""A real publisher process and a real subscriber process exchange Image and TFMessage on
loopback DDS, and the data arrives intact."""

import json
from pathlib import Path
import subprocess
import sys

from conftest import _fastdds_shm_files

PROCESSES = Path(__file__).resolve().parent / 'ros_processes'


def test_image_and_tf_cross_process(ros_env):
    shm_before = _fastdds_shm_files()
    subscriber = subprocess.Popen(
        [sys.executable, str(PROCESSES / 'image_tf_subscriber.py'), '5', '60'],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    publisher = subprocess.Popen(
        [sys.executable, str(PROCESSES / 'image_tf_publisher.py'), '60'],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sub_out, sub_err = subscriber.communicate(timeout=90)
        pub_out, pub_err = publisher.communicate(timeout=30)
    finally:
        for process in (subscriber, publisher):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert subscriber.returncode == 0, sub_err
    assert publisher.returncode == 0, pub_err
    received = json.loads(sub_out.strip().splitlines()[-1])
    assert len(received['images']) >= 5
    assert len(received['transforms']) >= 5
    assert all(image['intact'] for image in received['images']), received['images']
    assert all(t['intact'] and t['parent'] == 'map' for t in received['transforms'])
    # Frames arrive in publication order.
    ks = [image['k'] for image in received['images']]
    assert ks == sorted(ks)
    # Both processes shut down cleanly: no shared-memory segments left behind.
    assert _fastdds_shm_files() - shm_before == set()
