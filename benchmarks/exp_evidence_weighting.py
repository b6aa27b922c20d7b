"""bench_scenes with the evidence weighting changed (issue 26, a check): the floor (FLOOR, default 0.1), a power
of the Grad-CAM maps (POWER, default 1) and the layer Grad-CAM is read at (LAYER, default the last spatial one)
from the environment; the other arguments are bench_scenes.py's.

    FLOOR=0.0 POWER=2 PYTHONPATH=src python benchmarks/exp_evidence_weighting.py --classes missile,espresso \
        --seeds 0,1,2 --variants objects+weighted
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from vital_fv.references import evidence  # noqa: E402

evidence.EVIDENCE_FLOOR = float(os.environ.get("FLOOR", "0.1"))
power = float(os.environ.get("POWER", "1"))
layer = os.environ.get("LAYER") or None
orig = evidence.evidence_maps


def maps(*a, **k):
    return orig(*a, layer=layer, **k) ** power


evidence.evidence_maps = maps
import bench_scenes  # noqa: E402

sys.argv = ["bench_scenes.py", *sys.argv[1:]]
raise SystemExit(bench_scenes.main())
