"""dsac_evaluate run as a real subprocess on a tiny synthetic scene and a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_relocalizer import SCENE, tiny_checkpoint

from dsac_ros.data.synthetic import generate_scene


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'dsac_ros.cli.evaluate', *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp('cli')
    return generate_scene(root / 'tinyscene', SCENE), tiny_checkpoint(root / 'tiny.pt')


def test_cli_writes_json_pngs_and_prints_table(inputs, tmp_path):
    scene, checkpoint = inputs
    out = tmp_path / 'out'
    proc = run_cli('--checkpoint', str(checkpoint), '--scene', str(scene), '--split', 'test',
                   '--selection', 'all', '--hypotheses', '16', '--device', 'cpu',
                   '--max-frames', '2', '--threads', '1', '--no-progress', '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert 'below 5cm and 5' in lines[0]
    assert lines[1].split() == ['Scene', 'RANSAC', 'SoftAM', 'DSAC']
    assert lines[2].split()[0] == 'tinyscene' and len(lines[2].split()) == 4
    assert 'Median pose errors' in proc.stdout and '2cm and 2' in proc.stdout
    assert '10cm and 10' in proc.stdout and 'network' in proc.stdout
    assert 'Distance of the test views to the training views' in proc.stdout
    assert 'Accuracy by distance to the training views' in proc.stdout
    data = json.loads((out / 'results.json').read_text())
    assert data['scenes'][0]['frames'] == 2
    assert data['scenes'][0]['coverage']['frames'] == 2
    assert set(data['scenes'][0]['selections']) == {'ransac', 'softam', 'dsac'}
    for name in ('tinyscene_error_cdf.png', 'tinyscene_top_view.png'):
        assert (out / name).read_bytes()[:4] == b'\x89PNG'


def test_cli_two_scenes_single_mode_rgb_and_rgbd(inputs):
    scene, checkpoint = inputs
    proc = run_cli('--checkpoint', str(checkpoint), '--scene', str(scene), str(scene),
                   '--selection', 'ransac', '--hypotheses', '8', '--device', 'cpu',
                   '--max-frames', '1', '--threads', '1', '--no-progress', '--depth',
                   '--depth-noise', '0.01', '--inlier-threshold-cm', '8')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split() == ['Scene', 'RANSAC', 'RANSAC', 'RGB-D']
    assert 'Average' in proc.stdout and 'Complete' in proc.stdout


def test_cli_bad_checkpoint_and_arguments(inputs, tmp_path):
    scene, checkpoint = inputs
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'garbage')
    proc = run_cli('--checkpoint', str(corrupt), '--scene', str(scene), '--no-progress')
    assert proc.returncode == 2 and 'corrupt' in proc.stderr
    proc = run_cli('--checkpoint', str(corrupt), '--scene', str(scene), '--selection', 'best')
    assert proc.returncode == 2 and 'invalid choice' in proc.stderr
    proc = run_cli('--checkpoint', str(checkpoint), '--scene', str(tmp_path / 'nowhere'),
                   '--no-progress')
    assert proc.returncode == 2 and 'does not exist' in proc.stderr
