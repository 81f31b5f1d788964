#!/usr/bin/env bash
# GPU check of Prune Studio's pipeline (see bench/gpu_check.py), for a machine with an NVIDIA GPU,
# a python3 that has torch (CUDA), transformers, safetensors, numpy and psutil, no network and no
# model files. Nothing is installed: the repository's core/ is imported in place.
#
#   bash bench/gpu_check.sh                  # Llama-3-8B block shapes, 8 blocks, 128 x 2048 tokens, bf16
#   bash bench/gpu_check.sh --layers 32      # the whole 32-block model (about twice as long)
#   bash bench/gpu_check.sh --tiny           # CPU smoke test of the script itself
#
# Budget: under 8 minutes on one H200 with the defaults (the Python part stops itself at 7.5).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
ROOT="$(mktemp -d /tmp/prunestudio-gpu-check.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/prunestudio" "$ROOT/cache"
ln -s "$REPO/core" "$ROOT/prunestudio/core"   # prunestudio.core without installing anything
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PRUNESTUDIO_CACHE="$ROOT/cache"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
OUT_ARGS=()
if [ -n "${OUT:-}" ]; then OUT_ARGS=(--out "$OUT/gpu_check.json"); fi
timeout 450 "$PY" "$REPO/bench/gpu_check.py" "${OUT_ARGS[@]}" "$@"
