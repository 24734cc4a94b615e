#!/usr/bin/env bash
# The test command: sets up .venv when needed, then runs the whole suite (lint included).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh test/test_geometry_pnp.py -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
