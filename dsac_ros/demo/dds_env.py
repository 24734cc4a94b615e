"""Environment that keeps ROS 2 / Fast DDS traffic on this machine (loopback and shared memory).

Used by the tests and the demo, which start several ROS processes on one host. It imports nothing
from ROS, so it can build the environment before any rclpy process starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
import random
import sys
import tempfile

# The profile ships in config/ (source tree) and share/dsac_ros/config (installed).
_PROFILE_NAME = 'fastdds_localhost.xml'


def fastdds_profile_path() -> Path:
    """Path of the loopback-only Fast DDS profile (shared memory + UDPv4 on 127.0.0.1)."""
    source_tree = Path(__file__).resolve().parents[2] / 'config' / _PROFILE_NAME
    if source_tree.is_file():
        return source_tree
    installed = Path(sys.prefix) / 'share' / 'dsac_ros' / 'config' / _PROFILE_NAME
    if installed.is_file():
        return installed
    raise FileNotFoundError(
        f'{_PROFILE_NAME} not found in {source_tree.parent} or {installed.parent}')


def loopback_dds_env(
    domain_id: int | None = None,
    ros_home: str | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Variables that confine DDS discovery and data to this host.

    Args:
        domain_id: ROS_DOMAIN_ID; a random one in [1, 100] when None, so that concurrent test
            sessions do not see each other.
        ros_home: ROS_HOME (logs); a fresh temporary folder when None.
        base: environment to extend (e.g. os.environ); only the DDS variables when None.

    Returns:
        A new dict: ``base`` plus ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST,
        FASTDDS_DEFAULT_PROFILES_FILE, RMW_IMPLEMENTATION=rmw_fastrtps_cpp and ROS_HOME.
    """
    env = dict(base or {})
    env.update({
        'ROS_DOMAIN_ID': str(domain_id if domain_id is not None else random.randint(1, 100)),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'FASTDDS_DEFAULT_PROFILES_FILE': str(fastdds_profile_path()),
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp',
        'ROS_HOME': ros_home or tempfile.mkdtemp(prefix='dsac_ros_home_'),
        # Log lines from child processes arrive unbuffered and in order.
        'PYTHONUNBUFFERED': '1',
        'RCUTILS_LOGGING_BUFFERED_STREAM': '0',
    })
    # ament_index_python needs a prefix; in the pip environment the venv prefix holds the index.
    env.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    return env
