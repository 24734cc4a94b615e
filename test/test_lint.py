"""Lint with ament's conventions (line length 99, single quotes, sorted imports) via ruff."""

from pathlib import Path
import shutil
import subprocess
import sys

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which('ruff', path=str(Path(sys.executable).parent)) or shutil.which('ruff')
    assert ruff, 'ruff is not installed (scripts/setup_env.sh installs it)'
    result = subprocess.run([ruff, 'check', '--no-cache', '.'], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
