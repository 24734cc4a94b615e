"""Test-session set-up shared by every test.

Every rclpy participant started by a test (in this process or a child) stays on loopback:
the project's Fast DDS profile, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a random
ROS_DOMAIN_ID per session and ROS_HOME in a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch

from dsac_ros.data.synthetic import SyntheticRoom, SyntheticSceneConfig, trajectories
from dsac_ros.demo.dds_env import loopback_dds_env
from dsac_ros.demo.processes import honour_sigint

REPO_ROOT = Path(__file__).resolve().parents[1]
SHM = Path('/dev/shm')


def _fastdds_shm_files() -> set[str]:
    if not SHM.is_dir():
        return set()
    return {p.name for p in SHM.iterdir() if 'fastdds' in p.name or 'fastrtps' in p.name}


_SHM_BEFORE = pytest.StashKey[set]()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.update(loopback_dds_env())  # ROS_HOME: a fresh temporary folder
    # Tests are small: one thread each avoids oversubscribing CI's 2 cores, where the ROS and
    # training tests also run child processes.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    config.stash[_SHM_BEFORE] = _fastdds_shm_files()
    # Tests stop children with SIGINT; a suite started in the background (SIGINT ignored,
    # inherited across exec) would otherwise hand that to every child.
    honour_sigint()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(os.environ['ROS_HOME'], ignore_errors=True)
    leftover = _fastdds_shm_files() - session.config.stash.get(_SHM_BEFORE, set())
    if leftover and exitstatus == 0:
        # A node that did not shut down cleanly leaves its shared-memory segments behind.
        sys.stderr.write(f'\nFast DDS files left in /dev/shm: {sorted(leftover)[:5]}\n')
        session.exitstatus = 1


@pytest.fixture(scope='session')
def ros_env() -> dict[str, str]:
    """Environment for ROS child processes: this session's loopback DDS settings."""
    return dict(os.environ)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='module')
def room_frames():
    """Four frames of the synthetic room's first training sequence, rendered exactly:
    (room, config, images (4, H, W, 3) uint8, depth (4, H, W) metres, T_cw (4, 4, 4) float64);
    the renderer draws any other view of the same room for comparison."""
    config = SyntheticSceneConfig(train_frames=6, test_frames=1)
    room = SyntheticRoom(config.seed, config.room_size_m)
    poses = np.concatenate(trajectories(config)[0])[:4]
    rendered = [room.render_frame(T, config.K, config.width, config.height) for T in poses]
    images = torch.from_numpy(np.stack([r[0] for r in rendered]))
    depth = torch.from_numpy(np.stack([r[1] for r in rendered]))
    T_cw = torch.from_numpy(np.linalg.inv(poses))
    return room, config, images, depth, T_cw
