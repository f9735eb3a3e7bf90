#!/usr/bin/env bash
# The GPU check, one script, under 5 minutes on one H200 with 16 cores:
# baseline vs pipeline end to end on 20,000 ImageNet-like JPEGs, then model-only
# throughput with AMP. Append its output, with date and hardware, to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.log
#
# Needs torch/torchvision with CUDA plus this project's dependencies importable
# (pip install -e . where a registry is reachable; elsewhere carry wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, datasets, hydra, pandas, pyarrow, tqdm; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "cores: $(nproc)"
python3 benchmarks/bench.py --device cuda --images "${IMAGES:-20000}" --pairs 3 \
    --batch-size 512 --workers "$(nproc)" --memory "" --work "${WORK:-/tmp/alexnet-eval-bench}"
