"""Start and stop the node, player and recorder as child processes (demo, tests, benchmark).

`RosProcesses` is a context manager: every child it started is stopped on exit, also on an
exception or Ctrl-C, with SIGINT first (rclpy shuts down cleanly and removes its shared-memory
files), then SIGTERM, then SIGKILL as a last resort. It imports nothing from ROS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import logging
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time

_LOG = logging.getLogger(__name__)


@dataclass
class Child:
    """A started child: its Popen and the files its stdout/stderr go to."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """Everything the child wrote so far (stdout and stderr interleaved)."""
        try:
            return self.log_path.read_text(errors='replace')
        except OSError:
            return ''

    @property
    def returncode(self) -> int | None:
        return self.process.poll()


def honour_sigint() -> None:
    """Lets SIGINT interrupt this process (KeyboardInterrupt) even when it was started with
    SIGINT ignored, as a non-interactive shell starts its background jobs. Ignored SIGINT
    survives exec, so without this the demo would not stop on Ctrl-C and its children
    (stopped with SIGINT first, see `RosProcesses.stop`) would shut rclpy down without a
    KeyboardInterrupt. Call from the main thread."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, '-m', module, *args]


def node_command(params_file: str | Path | None = None,
                 parameters: Mapping[str, object] | None = None,
                 node_name: str | None = None) -> list[str]:
    """Command line of relocalize_node as ``ros2 run`` / launch_ros would build it
    (``node_name``: renamed, e.g. a second node; a params file then needs that name's key)."""
    ros_args: list[str] = []
    if node_name is not None:
        ros_args += ['-r', f'__node:={node_name}']
    if params_file is not None:
        ros_args += ['--params-file', str(params_file)]
    for name, value in (parameters or {}).items():
        if isinstance(value, bool):
            value = 'true' if value else 'false'
        elif value == '':
            value = "''"  # the YAML empty string: rcl refuses a bare `name:=`
        ros_args += ['-p', f'{name}:={value}']
    cmd = module_command('dsac_ros.ros.node')
    return cmd + (['--ros-args', *ros_args] if ros_args else [])


class RosProcesses:
    """Children sharing one environment; stopped in reverse start order on exit.

    Args:
        env: environment of every child (e.g. ``loopback_dds_env(base=os.environ)``).
        log_dir: folder for the children's logs; a temporary one when None.
    """

    def __init__(self, env: Mapping[str, str], log_dir: str | Path | None = None) -> None:
        self.env = dict(env)
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix='dsac_ros_logs_'))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []

    def start(self, name: str, command: Sequence[str], cwd: str | Path | None = None) -> Child:
        log_path = self.log_dir / f'{name}.log'
        log = open(log_path, 'wb')  # the child keeps its own descriptor; ours closes below
        try:
            process = subprocess.Popen(list(command), env=self.env, cwd=cwd, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        child = Child(name, process, log_path)
        self.children.append(child)
        _LOG.debug('started %s (pid %d): %s', name, process.pid, ' '.join(command))
        return child

    def stop(self, child: Child, timeout_s: float = 10.0) -> int:
        """SIGINT, then SIGTERM, then SIGKILL; returns the exit code."""
        process = child.process
        for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0),
                          (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                _LOG.warning('%s did not exit after %s', child.name, signal.Signals(sig).name)
        return process.wait()

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)

    def __enter__(self) -> RosProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def wait_for(predicate, timeout_s: float, interval_s: float = 0.05,
             children: Sequence[Child] = ()) -> bool:
    """Polls ``predicate()`` until true or timeout; stops early when a child has died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if any(c.returncode is not None for c in children):
            return bool(predicate())
        time.sleep(interval_s)
    return bool(predicate())


def wait_exit(child: Child, timeout_s: float) -> int | None:
    """Waits for a child to exit by itself; its exit code, or None on timeout."""
    try:
        return child.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (psutil when present, else /proc)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        with open(f'/proc/{pid}/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
