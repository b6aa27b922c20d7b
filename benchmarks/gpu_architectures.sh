#!/usr/bin/env bash
# Issue 4's GPU table, run through the device tool on a lent GPU machine (one call, timeout_s 600):
#   run(command="bash benchmarks/gpu_architectures.sh", carry=[".whl"])
# Rows print as each model finishes and go to $OUT as they come, so a run cut by the time limit keeps what it
# measured; the ViT-L/16 (slowest) comes last. Record what it printed in benchmarks/README.md.
set -uo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu_architectures.log"
python3 benchmarks/bench_architectures.py --device cuda --reps 30 --paper-image \
  --models resnet50,densenet121,convnext_base,vit_l_32,vit_l_16 \
  --out "$OUT/gpu_architectures.md" 2>&1 | tee -a "$OUT/gpu_architectures.log"
