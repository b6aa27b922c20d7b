"""Random transforms and the gradient low-pass."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from vital_fv.transforms import GaussianBlur, roll


@pytest.mark.parametrize("kernel, sigma", [(5, 1.0), (3, 0.5), (7, 1.5)])
def test_the_cached_blur_gives_torchvisions_values_exactly(kernel, sigma):
    """Same kernel, same padding, same convolution: the VITAL images do not change by building it once."""
    blur = GaussianBlur(kernel, sigma)
    for shape in ((1, 3, 32, 32), (2, 3, 20, 24)):
        g = torch.randn(shape, generator=torch.Generator().manual_seed(kernel))
        assert torch.equal(blur(g), gaussian_blur(g, [kernel, kernel], [sigma, sigma]))
    assert len(blur._kernels) == 1  # built once for these channels, device and dtype


def test_roll_shifts_each_item_by_its_own_offset():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = roll(x, [(1, 0), (0, 2)])
    assert torch.equal(out[0], torch.roll(x[0], (1, 0), (1, 2)))
    assert torch.equal(out[1], torch.roll(x[1], (0, 2), (1, 2)))
