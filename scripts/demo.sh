#!/usr/bin/env bash
# The demo: sets up .venv when needed, then relocalizes the synthetic demo sequence through the
# ROS 2 node (player -> node -> recorder) and prints accuracy and latency.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m dsac_ros.cli.demo "$@"
