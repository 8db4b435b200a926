#!/usr/bin/env bash
# The main job, end to end on this machine: set-up, then the tiny AcFormer on the offline
# demo dataset on 8 simulated CPU devices: stage 1 (connector alignment on captions),
# stage 2 (visual instruction tuning, initialised from stage 1), then held-out evaluation
# with jitted generation (inside stage 2 and again from its export with the evaluation CLI),
# scored against the best answer-prior baseline.
#   launch/demo.sh [WORKDIR]          (default: runs/demo; re-running resumes)
# Extra settings via env: DEMO_STAGE1_ARGS / DEMO_STAGE2_ARGS (extra train flags).
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n 2,7p "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cd "$(dirname "$0")/.."
bash launch/setup.sh
W=${1:-runs/demo}
mkdir -p "$W"
PY=.venv/bin/python
export JAX_PLATFORMS=cpu
COMMON=(--local_device_count=8 --config.data.data_dir="$W/tfds")

echo "== stage 1: connector alignment (captions) =="
$PY -m acformer_jax.train --config configs/tiny_acformer_stage1.py --workdir "$W/stage1" \
  "${COMMON[@]}" ${DEMO_STAGE1_ARGS:-}

echo "== stage 2: visual instruction tuning (QA), from stage 1 =="
$PY -m acformer_jax.train --config configs/tiny_acformer_stage2.py --workdir "$W/stage2" \
  "${COMMON[@]}" --config.init.params_from="orbax:$W/stage1" ${DEMO_STAGE2_ARGS:-}

echo "== evaluation of the export on the held-out questions (evaluate run + score) =="
# Stage 2 already answered these questions with its final parameters (config.eval: summary.json
# and stage2/eval/); the exported checkpoint, loaded by the evaluation CLI, must agree.
D="$W/stage2/eval_data"
rm -f "$W/answers.jsonl"
$PY -m acformer_jax.evaluate run --checkpoint "$W/stage2/export" --benchmark demo \
  --questions "$D/questions.jsonl" --images "$D/images" --output "$W/answers.jsonl" --batch_size 50
$PY -m acformer_jax.evaluate score --benchmark demo --answers "$W/answers.jsonl" --data "$D" \
  | tee "$W/score.txt"
$PY - "$W/stage2/summary.json" "$W/score.txt" <<'EOF_PY'
import json, sys
reported = json.load(open(sys.argv[1]))["eval"]["metrics"]["accuracy"]
scored = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])["accuracy"]
print(f"held-out accuracy reported by the training job: {reported:.2f}; "
      f"by evaluate run + score on the export: {scored:.2f}")
sys.exit(0 if reported == scored else f"the two differ ({reported} vs {scored})")
EOF_PY
