"""Small models and image folders the reference tests build (shared by the references_* test files)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from vital_fv.references import scan
from vital_fv.zoo import Preprocess, load_model


def write_color(folder, name, rgb, size=(40, 30)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = rgb
    Image.fromarray(arr).save(folder / name)


def red_detector():
    """Channel 0 fires on red (R - (G + B) / 2, rectified); channel 1 never fires."""
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[0, :, 0, 0] = torch.tensor([1.0, -0.5, -0.5])
        net[0].bias.copy_(torch.tensor([0.0, -1.0]))
    return load_model(net, layers=["1"], preprocess=Preprocess(32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                      class_names=[], name="red-detector")

def pattern_folder(folder, n=6):
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(90, 140, size=(48, 64, 3), dtype=np.uint8)  # grey noise
        if i == 3:
            arr[8:24, 40:56] = (230, 20, 20)  # the pattern, in one image only
        Image.fromarray(arr).save(folder / f"img{i}.png")


def ctrl_c_on_decode(monkeypatch, n: int):  # noqa: ANN201
    """The scan's n-th image decode raises KeyboardInterrupt (a Ctrl-C mid-scan); returns the undo."""
    real = scan.decode_image
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scan, "decode_image", flaky)
    return lambda: monkeypatch.setattr(scan, "decode_image", real)
