#!/usr/bin/env bash
# The paper's Figure 1 on the offline demo: held-out accuracy against training step time, per
# connector. Trains the tiny model twice through both stages (AcFormer, 17 visual tokens, and
# the LLaVA-1.5 MLP, all 64 patches); each stage-2 run reports its accuracy on the 500
# held-out questions (config.eval). Step times come from `bench speed` on the stage-2 model
# and batch, both connectors interleaved in one process. Writes WORKDIR/figure1.json and
# docs/figures/figure1_demo.png.
#   benchmarks/figure1_demo.sh [WORKDIR]      (default runs/figure1; re-running resumes)
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n 2,8p "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cd "$(dirname "$0")/.."
bash launch/setup.sh
W=${1:-runs/figure1}
PY=.venv/bin/python
export JAX_PLATFORMS=cpu
COMMON=(--local_device_count=8 --config.data.data_dir="$W/tfds")

train_both_stages() {  # NAME STAGE1_CONFIG STAGE2_CONFIG
  $PY -m acformer_jax.train --config "$2" --workdir "$W/$1/stage1" "${COMMON[@]}"
  $PY -m acformer_jax.train --config "$3" --workdir "$W/$1/stage2" "${COMMON[@]}" \
    --config.init.params_from="orbax:$W/$1/stage1"
}
train_both_stages acformer configs/tiny_acformer_stage1.py configs/tiny_acformer_stage2.py
train_both_stages mlp2x_gelu configs/tiny_mlp.py:stage1 configs/tiny_mlp.py:stage2

$PY -m acformer_jax.bench speed --config configs/tiny_acformer_stage2.py \
  --connectors mlp2x_gelu,acformer --reps 9 --json "$W/speed.json"
$PY - "$W" <<'EOF_PY'
import json, pathlib, sys
w = pathlib.Path(sys.argv[1])
acc = {name: json.loads((w / name / "stage2" / "summary.json").read_text())["eval"]["metrics"]["accuracy"]
       for name in ("acformer", "mlp2x_gelu")}
(w / "accuracy.json").write_text(json.dumps(acc) + "\n")
EOF_PY
$PY -m acformer_jax.bench plot --speed "$W/speed.json" --accuracy "$W/accuracy.json" \
  --out docs/figures/figure1_demo.png --ylabel "held-out demo accuracy (%)" \
  --title "Demo: accuracy vs stage-2 train step time" --json "$W/figure1.json"
