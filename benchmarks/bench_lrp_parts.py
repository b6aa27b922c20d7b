"""Where the LRP step's time goes on Lite0 (issue 30, the 2.2x target), one torch thread, medians of 25 calls:
a plain forward (with grad) and forward+backward, the relevance copy's forward, the forward plus the relevance pass,
and the same plus a plain loss backward; then whether the 1x1 twin convolutions' input gradients could be one ``mm``
(bit-identical to ``convolution_backward``, and how much cheaper) at Lite0's 1x1 shapes.

    PYTHONPATH=src python benchmarks/bench_lrp_parts.py        # ~2 min on a quiet 2-core CPU
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from vital_fv import load_model
from vital_fv.relevance import Relevance


def _median_ms(fn, n: int = 25) -> float:  # noqa: ANN001
    ts = []
    for _ in range(n + 3):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts[3:]) * 1e3


def _conv1x1_row(cin: int, cout: int, side: int, g: torch.Generator) -> str:
    x = torch.randn(1, cin, side, side, generator=g).clamp(min=0)
    w = torch.randn(cout, cin, 1, 1, generator=g).clamp(min=0)
    s = torch.randn(1, cout, side, side, generator=g)
    assert torch.equal(F.conv2d(x, w), (w.view(cout, cin) @ x.view(cin, -1)).view(1, cout, side, side))

    def conv_bwd() -> torch.Tensor:
        return torch.ops.aten.convolution_backward(s, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                                   [True, False, False])[0]

    def mm_bwd() -> torch.Tensor:
        return (w.view(cout, cin).t() @ s.view(cout, -1)).view(1, cin, side, side)

    same = torch.equal(conv_bwd(), mm_bwd())
    conv_us, mm_us = _median_ms(conv_bwd, 30) * 1e3, _median_ms(mm_bwd, 30) * 1e3
    return f"| {cin}, {cout}, {side} | {conv_us:.0f} | {mm_us:.0f} | {same} |"


def main() -> int:
    torch.set_num_threads(1)
    spec = load_model("efficientnet_lite0")
    model = spec.module.eval().requires_grad_(False)
    rel = Relevance(model, list(spec.preset.layers), "lrp", model_name=spec.name)
    x0 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def run(what: str):  # noqa: ANN202
        def fn() -> None:
            x = x0.clone().requires_grad_()
            with torch.enable_grad():
                if what == "plain forward":
                    model(x)
                elif what == "plain forward+backward":
                    model(x).sum().backward()
                elif what == "relevance copy forward":
                    rel.module(x)
                elif what == "copy forward + relevance pass":
                    rel(x, [967], keep_graph=True)
                else:
                    out = rel(x, [967], keep_graph=True)
                    loss = sum((a**2).mean() for a in out.acts.values())
                    with rel.plain_gradients():
                        loss.backward()

        return fn

    print("| part (Lite0, 1 thread) | ms |\n|---|---|")
    for what in ("plain forward", "plain forward+backward", "relevance copy forward", "copy forward + relevance pass",
                 "copy forward + relevance pass + loss backward"):
        print(f"| {what} | {_median_ms(run(what)):.1f} |", flush=True)
    print("\n| 1x1 conv (in, out, side) | input gradient: convolution_backward us | as mm us | bit-identical |")
    print("|---|---|---|---|")
    g = torch.Generator().manual_seed(1)
    for cin, cout, side in [(16, 96, 112), (24, 144, 56), (40, 240, 28), (80, 480, 14), (112, 672, 14),
                            (192, 1152, 7)]:
        print(_conv1x1_row(cin, cout, side, g), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
