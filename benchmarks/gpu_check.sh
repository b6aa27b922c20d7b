#!/usr/bin/env bash
# The GPU checks, run through the device tool on a lent GPU machine (its image has torch, timm, torchvision,
# scikit-image, scikit-learn; the Lite0/Lite2 weight wheels travel in .whl/, see benchmarks/README.md).
# Each part writes its own file under $OUT, so a failing part does not lose the others.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, timm, torchvision, numpy; print('torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__, 'numpy', numpy.__version__)"
python3 benchmarks/bench_engine.py --device cuda --reps 50 --paper-image --out "$OUT/gpu_engine.md" 2>&1 | tee "$OUT/gpu_engine.log"
python3 benchmarks/sweep_quick.py --device cuda 2>&1 | tee "$OUT/gpu_sweep.md"
