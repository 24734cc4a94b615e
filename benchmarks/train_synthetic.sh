#!/usr/bin/env bash
# Acceptance recipe on the synthetic scene (CPU sized, about 40 minutes in all):
#   1. generate the synthetic scene (default SyntheticSceneConfig, seed 0) if it is missing;
#   2. componentwise training: coordinates for COORD_MINUTES (default preset: Adam 2e-3
#      cosine-decayed over the budget, batch 8 of whole frames as the shipped model had (the
#      preset's default is now 4 windows of 0.6 of each side), bf16 autocast + channels_last where the CPU
#      has native bf16), then the score CNN (SCORE_ITERS steps);
#   3. short end-to-end fine-tuning from the componentwise model, once with DSAC and once with
#      SoftAM (E2E_ITERS steps each, into separate folders; the preset's per-millimetre
#      learning rate and clamp, docs/CONTRACTS.md Units);
#   4. evaluate all three models on the test split (RANSAC, SoftAM and DSAC selection), with
#      soft inlier counts and with the Score CNN, at the inlier threshold each model carries
#      (the paper's 10 px scaled to the 320 px images: 5 px).
# Rerunning resumes / skips finished stages (each stage folder keeps its checkpoint).
# benchmarks/e2e_ablation.py runs step 3 and 4 over seeds and tabulates the spread.
#
# Usage: benchmarks/train_synthetic.sh [SCENE_DIR] [RUN_DIR]
# Environment: COORD_MINUTES (30), SCORE_ITERS (2000), E2E_ITERS (300), THREADS (unset),
#              DEVICE (auto), PYTHON (.venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
SCENE="${1:-/tmp/dsac_synth}"
RUNS="${2:-$ROOT/runs/synthetic}"
COORD_MINUTES="${COORD_MINUTES:-30}"
SCORE_ITERS="${SCORE_ITERS:-2000}"
E2E_ITERS="${E2E_ITERS:-300}"
DEVICE="${DEVICE:-auto}"
THREAD_ARGS=()
if [[ -n "${THREADS:-}" ]]; then THREAD_ARGS=(--threads "$THREADS"); fi

if [[ ! -f "$SCENE/TrainSplit.txt" ]]; then
  echo "== generating the synthetic scene in $SCENE"
  "$PYTHON" - "$SCENE" <<'EOF'
import sys
from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_scene
generate_scene(sys.argv[1], SyntheticSceneConfig())
EOF
fi

BASE="$RUNS/componentwise"
echo "== stage 1: coordinates, $COORD_MINUTES min -> $BASE"
"$PYTHON" -m dsac_ros.cli.train --scene "$SCENE" --out "$BASE" --stage coords \
  --minutes "$COORD_MINUTES" --batch-size 8 --crop-fraction 1 --device "$DEVICE" "${THREAD_ARGS[@]}"
echo "== stage 2: score CNN, $SCORE_ITERS steps -> $BASE"
"$PYTHON" -m dsac_ros.cli.train --scene "$SCENE" --out "$BASE" --stage score \
  --iterations "$SCORE_ITERS" --device "$DEVICE" "${THREAD_ARGS[@]}"

for SEL in dsac softam; do
  echo "== stage 3: end-to-end $SEL, $E2E_ITERS steps -> $RUNS/e2e_$SEL"
  "$PYTHON" -m dsac_ros.cli.train --scene "$SCENE" --out "$RUNS/e2e_$SEL" --stage e2e \
    --selection "$SEL" --init "$BASE/checkpoint.pt" --iterations "$E2E_ITERS" \
    --device "$DEVICE" "${THREAD_ARGS[@]}"
done

for MODEL in componentwise e2e_dsac e2e_softam; do
  for SCORING in soft_inliers score_net; do
    echo "== evaluating $MODEL ($SCORING)"
    "$PYTHON" -m dsac_ros.cli.evaluate --checkpoint "$RUNS/$MODEL/model.pt" --scene "$SCENE" \
      --selection all --scoring "$SCORING" --device "$DEVICE" --out "$RUNS/$MODEL/eval_$SCORING" \
      --no-progress "${THREAD_ARGS[@]}"
  done
done
echo "== done: results in $RUNS/*/eval_*/"
