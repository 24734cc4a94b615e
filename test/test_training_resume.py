"""The dsac_train CLI as a process: resume after SIGKILL, save on SIGTERM, torchrun DDP (gloo)."""

import csv
import os
from pathlib import Path
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_scene
from dsac_ros.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny_scene(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('tiny') / 'scene'
    generate_scene(root, SyntheticSceneConfig(width=80, height=64, fx=65.0, fy=65.0,
                                              train_frames=12, test_frames=3))
    return root


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    return env


def _cli(scene: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'dsac_ros.cli.train', '--scene', str(scene), '--out', str(out),
            '--coord-net', 'small', '--precision', 'fp32', '--device', 'cpu', '--threads', '1',
            '--max-frames', '4', '--batch-size', '2', '--no-progress', '--log-every', '5',
            *extra]


def _saved_step(path: Path) -> int | None:
    try:
        training = read_checkpoint_dict(path)['training']
    except CheckpointError:
        return None
    return int(training['step']) if training and training.get('stage') else None


def _wait_for_step(proc: subprocess.Popen, path: Path, step: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        saved = _saved_step(path) if path.exists() else None
        if saved is not None and saved >= step:
            return saved
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f'no checkpoint with step >= {step} within {timeout} s')


def test_resume_after_sigkill(tiny_scene: Path, tmp_path: Path):
    out = tmp_path / 'run'
    long_run = _cli(tiny_scene, out, '--stage', 'coords', '--iterations', '100000',
                    '--checkpoint-every', '5', '--checkpoint-seconds', '1000')
    proc = subprocess.Popen(long_run, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_step(proc, out / 'checkpoint.pt', 10)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = _saved_step(out / 'checkpoint.pt')
    assert saved is not None and saved >= 10 and saved % 5 == 0
    # SIGKILL may land inside a checkpoint write: its temp file may stay until the next run.

    finish = _cli(tiny_scene, out, '--stage', 'coords', '--iterations', str(saved + 10),
                  '--checkpoint-every', '5')
    done = subprocess.run(finish, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'resuming at step {saved}' in done.stderr
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]
    raw = read_checkpoint_dict(out / 'checkpoint.pt')
    assert raw['training']['completed'] == ['coords'] and raw['training']['stage'] is None
    with open(out / 'log.csv', newline='') as f:
        steps = [int(r['step']) for r in csv.DictReader(f) if r['stage'] == 'coords']
    assert steps == sorted(set(steps)) and steps[-1] == saved + 10
    assert load_checkpoint(out / 'model.pt').image_size == (64, 80)


def test_sigterm_saves_and_exits(tiny_scene: Path, tmp_path: Path):
    out = tmp_path / 'term'
    cmd = _cli(tiny_scene, out, '--stage', 'coords', '--iterations', '100000',
               '--checkpoint-every', '1000', '--checkpoint-seconds', '1000', '--log-every', '2')
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    log = out / 'log.csv'
    deadline = time.monotonic() + 60
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output
    saved = _saved_step(out / 'checkpoint.pt')
    assert saved is not None and saved >= 4, output  # saved on the signal, not periodically
    assert 'interrupted by signal' in output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_ddp_two_processes_gloo(tiny_scene: Path, tmp_path: Path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_addr', '127.0.0.1', '--master_port', str(_free_port()),
           '-m', 'dsac_ros.cli.train', '--scene', str(tiny_scene), '--out', str(out),
           '--coord-net', 'small', '--precision', 'fp32', '--device', 'cpu', '--threads', '1',
           '--max-frames', '6', '--batch-size', '2', '--no-progress', '--log-every', '2',
           '--stage', 'all', '--iterations', '4', '--hypotheses', '16']
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=150)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Every rank makes the same novel views (6 frames, one view each where the draw kept
    # enough of the frame) and trains on its half of frames and views.
    shards = {int(r): (int(n), int(total)) for r, n, total in
              re.findall(r'rank (\d)/2: (\d+) of (\d+) frames', output)}
    assert set(shards) == {0, 1}, output
    total = shards[0][1]
    assert shards[1][1] == total and 6 < total <= 12, output
    assert shards[0][0] + shards[1][0] == total and abs(shards[0][0] - shards[1][0]) <= 1
    raw = read_checkpoint_dict(out / 'checkpoint.pt')
    assert raw['training']['world_size'] == 2
    assert raw['training']['completed'] == ['coords', 'head', 'score', 'e2e']
    model = load_checkpoint(out / 'model.pt')
    assert model.score_net is not None
    # Only rank 0 wrote: one log with one row per logged step.
    with open(out / 'log.csv', newline='') as f:
        rows = [(r['stage'], r['step']) for r in csv.DictReader(f)]
    assert len(rows) == len(set(rows)) == 8  # 4 stages x steps 2 and 4


def test_train_from_bag_in_process(tiny_scene: Path, tmp_path: Path):
    from dsac_ros.cli.train import main
    from dsac_ros.data.bag_writer import SceneBagTopics, write_scene_bag

    bag = tmp_path / 'tiny_bag'
    topics = SceneBagTopics()
    assert write_scene_bag(tiny_scene, bag, 'mcap', split='train', max_frames=6) == 6
    out = tmp_path / 'bag_run'
    args = ['--bag', str(bag), '--image-topic', topics.image, '--camera-info-topic',
            topics.camera_info, '--pose-topic', topics.pose, '--depth-topic', topics.depth,
            '--out', str(out), '--stage', 'coords', '--iterations', '3', '--coord-net', 'small',
            '--precision', 'fp32', '--device', 'cpu', '--no-progress', '--batch-size', '2']
    assert main(args) == 0
    assert (out / 'scene' / 'TrainSplit.txt').is_file()
    model = load_checkpoint(out / 'model.pt')
    assert model.image_size == (64, 80)
    # Bad input: a missing topic gives exit status 2, not a traceback.
    assert main(['--bag', str(bag), '--out', str(tmp_path / 'x'), '--image-topic', '/nope',
                 '--camera-info-topic', topics.camera_info, '--pose-topic', topics.pose]) == 2


def test_optimizer_state_of_other_groups_restarts_the_moments():
    """A run saved when stage 1 had one parameter group resumes under two (encoder, head):
    the moments restart, nothing raises; a fitting state is restored exactly."""
    import torch

    from dsac_ros.training.config import LrSchedule
    from dsac_ros.training.session import Optim, restore_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    old = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(5, 3)).square().sum().backward()
    old.step()
    two_groups = torch.optim.Adam([{'params': net[0].parameters()},
                                   {'params': net[1].parameters()}], lr=1e-3)
    schedule = LrSchedule(lr=1e-3)
    assert not restore_optimizer(Optim('coords', two_groups, schedule), old.state_dict())
    assert len(two_groups.state) == 0
    same = torch.optim.Adam(net.parameters(), lr=1e-3)
    assert restore_optimizer(Optim('coords', same, schedule), old.state_dict())
    moments = [same.state[p]['exp_avg'] for p in net.parameters()]
    assert all(torch.equal(m, old.state[p]['exp_avg']) for m, p in zip(moments, net.parameters()))
