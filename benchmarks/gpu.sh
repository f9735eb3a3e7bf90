#!/usr/bin/env bash
# The GPU check, one command, under 10 minutes on one H200 with 16 cores (its steps' own
# timeouts add up to 580 s, inside a device call's 600): the gpu-marked tests (where
# pytest is installed), preflight (CUDA, imports, /dev/shm, disk) before any other work, a
# 20,000-image corpus built in parallel, then every mode side by side with the reference
# loop (in-loop and whole-process times apart), the ceiling, the start-up comparison, and
# the other sources (sources.py). Append the output, with date and hardware, to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.log
#   bash benchmarks/gpu.sh --dry-run      # the same steps on CPU, tiny, < 3 minutes
#
# Needs torch/torchvision with CUDA and this project's dependencies importable: installed,
# or carried as wheels and put on PYTHONPATH (benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
date -u
if [[ "${1:-}" == "--dry-run" ]]; then
    exec timeout 180 python3 benchmarks/bench.py --dry-run --work "${WORK:-/tmp/alexnet-eval-bench-dry}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "cores: $(nproc)"
# the CUDA paths against the CPU reference first (tests/test_gpu.py), if pytest is there
if python3 -c 'import pytest' 2>/dev/null; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py || true
fi
timeout 290 python3 benchmarks/bench.py --device cuda --images "${IMAGES:-20000}" --pairs 2 \
    --batch-size 512 --workers "$(nproc)" --memory "" --model-seconds 3 --timeout 120 \
    --work "${WORK:-/tmp/alexnet-eval-bench}"
# the other sources on the GPU: .pt2 on CUDA, onnxruntime's CUDA provider (where
# onnxruntime-gpu is installed), a zero-shot ViT-B-32's head build (1000 x 80) and run
timeout 170 python3 benchmarks/sources.py --device cuda --images "${SOURCE_IMAGES:-4000}" \
    --work "${WORK:-/tmp/alexnet-eval-bench}/sources" || echo "sources.py: did not finish"
