#!/usr/bin/env bash
# Builds .venv: pinned dependencies (ROS 2 Kilted wheels, CPU torch), the tf2_msgs interface
# package generated from interfaces/tf2_msgs, and dsac_ros itself (editable).
# Idempotent: when the inputs have not changed since the last complete run it returns at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DSAC_ROS_VENV:-$ROOT/.venv}"
STAMP="$VENV/.dsac_ros_setup"

inputs_hash() {
  (cd "$ROOT" && find requirements.txt requirements-build.txt setup.py setup.cfg package.xml \
    interfaces/tf2_msgs resource launch config -type f -print0 | sort -z | xargs -0 cat) |
    sha256sum | cut -d' ' -f1
}

want="$(inputs_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

# The torch wheel on this kind of machine is cp311: prefer Python 3.11.
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi

start=$SECONDS
echo "[setup] creating environment in $VENV with $($PYTHON --version)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip_quiet() {
  # This machine's pip config names local indexes that may be empty; their warnings are noise.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v "^WARNING: Location '.*' is ignored" || true; }
  return "${PIPESTATUS[0]}"
}
echo "[setup] installing pinned dependencies"
pip_quiet -r "$ROOT/requirements.txt" -r "$ROOT/requirements-build.txt"

# tf2_msgs has no wheel: generate it into the venv prefix (see interfaces/tf2_msgs/CMakeLists.txt).
if ! "$VENV/bin/python" -c 'import tf2_msgs.msg' 2>/dev/null ||
   [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
  echo "[setup] building tf2_msgs"
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  {
    cmake -S "$ROOT/interfaces/tf2_msgs" -B "$build" -DCMAKE_PREFIX_PATH="$VENV" \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF &&
    cmake --build "$build" -j"$(nproc)" && cmake --install "$build"
  } >"$build.log" 2>&1 || { cat "$build.log"; echo "[setup] tf2_msgs build failed" >&2; exit 1; }
  rm -f "$build.log"
fi

echo "[setup] installing dsac_ros (editable)"
pip_quiet --no-deps --no-build-isolation -e "$ROOT"
# Editable installs skip data_files: put the ament marker, package.xml, launch/ and config/
# into $VENV/share as colcon would, so ament_index finds the package (AMENT_PREFIX_PATH=$VENV).
(cd "$ROOT" && "$VENV/bin/python" setup.py -q install_data --install-dir "$VENV" >/dev/null 2>&1) ||
  { echo "[setup] installing share/dsac_ros failed" >&2; exit 1; }

"$VENV/bin/python" - <<'PY'
import cv2, numpy, rclpy, torch  # noqa: F401
from sensor_msgs.msg import Image  # noqa: F401
from tf2_msgs.msg import TFMessage  # noqa: F401
import dsac_ros  # noqa: F401
PY
echo "$want" >"$STAMP"
echo "[setup] done in $((SECONDS - start)) s"
