#!/usr/bin/env bash
# Issue 30's GPU table in one call on a lent machine (its image has torch, timm, torchvision; the Lite0/Lite2 weight
# wheels travel in .whl/, see benchmarks/README.md):
#   run(command="bash benchmarks/gpu_throughput.sh", carry=[".whl"], timeout_s=600)
# and on any machine, tiny sizes on the CPU to know it works (the smoke record: results/cpu_throughput_smoke.md):
#   OUT=/tmp/smoke PYTHONPATH=src bash benchmarks/gpu_throughput.sh --smoke
# Three parts, each under its own time limit and written to $OUT as it finishes, so a part cut short keeps the
# others: (1) the VITAL step / plain forward+backward on the paper's five architectures (bench_architectures.py);
# (2) seconds per image-step at batch 1, 8, 32 for every registered method (bench_batching.py); (3) an atlas of
# 100 classes with the batch size chosen by measurement, in one process and with 2 workers on the one GPU
# (bench_atlas.py). The table is $OUT/gpu_throughput.md (the smoke's: $OUT/cpu_throughput_smoke.md), made from
# whatever parts $OUT holds: PARTS="architectures" reruns one part into the same $OUT.
set -uo pipefail
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ $SMOKE = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
fi
export PYTHONPATH=${PYTHONPATH:-$PWD/src} PYTHONUNBUFFERED=1
if [ $SMOKE = 1 ]; then
  DEV=cpu; TABLE=$OUT/cpu_throughput_smoke.md
  ARCH=(--models resnet50 --reps 2); ARCH_T=1500
  BATCH=(--sizes 1,2 --steps 3 --rounds 1 --threads 1); BATCH_T=900
  ATLAS=(--classes 0,1,2 --steps 3); ATLAS_T=900
  HEAD="CPU smoke ($(getconf _NPROCESSORS_ONLN) cores): tiny sizes, to show the script works; the numbers mean nothing"
else
  DEV=cuda; TABLE=$OUT/gpu_throughput.md
  ARCH=(--models resnet50,densenet121,convnext_base,vit_l_32,vit_l_16 --reps 10); ARCH_T=170
  BATCH=(--sizes 1,8,32 --steps 6 --rounds 2 --threads 0); BATCH_T=170
  ATLAS=(--classes 0-99 --steps 50); ATLAS_T=200
  HEAD="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
fi
PARTS=${PARTS:-architectures batching atlas}
echo "$HEAD" | tee -a "$OUT/throughput.log"
[[ " $PARTS " == *" architectures "* ]] && timeout $ARCH_T $PY benchmarks/bench_architectures.py --device $DEV "${ARCH[@]}" --out "$OUT/architectures.md" \
  2>&1 | tee -a "$OUT/throughput.log"
[[ " $PARTS " == *" batching "* ]] && timeout $BATCH_T $PY benchmarks/bench_batching.py --device $DEV "${BATCH[@]}" --out "$OUT/batching.md" \
  2>&1 | tee -a "$OUT/throughput.log"
[[ " $PARTS " == *" atlas "* ]] && timeout $ATLAS_T $PY benchmarks/bench_atlas.py --device $DEV --only auto,auto2 "${ATLAS[@]}" --out "$OUT/atlas.md" \
  2>&1 | tee -a "$OUT/throughput.log"
{
  echo "# Throughput (issue 30): $HEAD"
  echo
  echo "command: bash benchmarks/gpu_throughput.sh${1:+ $1}; torch $($PY -c 'import torch; print(torch.__version__)')"
  for part in architectures batching atlas; do
    echo
    echo "## $part"
    echo
    if [ -s "$OUT/$part.md" ]; then cat "$OUT/$part.md"; else echo "(not finished: see throughput.log)"; fi
  done
} > "$TABLE"
cat "$TABLE"
