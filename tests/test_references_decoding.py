"""Reference decoding (``references.sets``): any bytes, size, mode or bit depth either decodes to the right uint8
image or raises the project's own error, never a traceback; tensors out of range are refused or converted."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vital_fv import VitalError, references
from vital_fv.references.sets import BACKGROUND, decode_image
from vital_fv.zoo import Preprocess


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_sixteen_bit_greys_keep_their_level_and_the_record_says_so(tmp_path):
    arr = np.full((6, 5), 30000, dtype=np.uint16)
    arr[0, 0] = 65535
    path = tmp_path / "g16.png"
    path.write_bytes(_png(Image.fromarray(arr)))  # mode I;16
    notes: list[str] = []
    img = decode_image(path.read_bytes(), path, notes)
    assert img.shape == (3, 6, 5) and int(img[0, 1, 1]) == round(30000 / 65535 * 255) and int(img[0, 0, 0]) == 255
    assert notes and "scaled" in notes[0]
    refs = references.from_files([path])
    assert "scaled" in refs.describe()["decoding"][str(path)][0]


def test_transparent_pixels_are_grey_not_their_hidden_colour():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere, but half of it fully transparent
    rgba[:, :2, 3] = 255
    notes: list[str] = []
    img = decode_image(_png(Image.fromarray(rgba, "RGBA")), "a.png", notes)
    assert img[:, 0, 0].tolist() == [255, 0, 0] and img[:, 0, 3].tolist() == list(BACKGROUND)
    assert notes == [f"transparent pixels composited on grey {BACKGROUND[0]}"]


def test_unreadable_bytes_name_the_file_not_a_buffer():
    with pytest.raises(VitalError, match=r"cannot read image broken\.jpg: ") as info:
        decode_image(b"\xff\xd8 not really a jpeg", "broken.jpg")
    assert "BytesIO" not in str(info.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "I;16", "I", "F", "1", "CMYK"]),
       w=st.integers(1, 24), h=st.integers(1, 24), seed=st.integers(0, 2**16), fmt=st.sampled_from(["PNG", "TIFF"]))
def test_any_mode_size_and_depth_decodes_to_uint8_rgb(mode, w, h, seed, fmt):
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    img = base.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        {"I;16": rng.integers(0, 65536, (h, w), dtype=np.uint16), "I": rng.integers(0, 65536, (h, w)).astype(np.int32),
         "F": rng.random((h, w)).astype(np.float32)}[mode])
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # a combination the format cannot hold
    out = decode_image(buf.getvalue(), f"x.{fmt.lower()}")
    assert out.dtype == torch.uint8 and out.shape == (3, h, w)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=256))
def test_any_bytes_decode_or_raise_our_error(data):
    try:
        out = decode_image(data, "x")
    except VitalError as exc:
        assert str(exc).startswith("cannot read image x: ")
    else:
        assert out.dtype == torch.uint8 and out.shape[0] == 3


def test_tensors_out_of_range_are_refused_or_converted_with_a_message():
    with pytest.raises(VitalError, match="values below 0.*looks normalized"):
        references.from_tensor(torch.randn(1, 3, 8, 8))
    with pytest.raises(VitalError, match="NaN or infinite"):
        references.from_tensor(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(VitalError, match="values up to 1e\\+03"):
        references.from_tensor(torch.full((1, 3, 8, 8), 1000.0))
    with pytest.warns(UserWarning, match="read as 0-255 and divided by 255"):
        refs = references.from_tensor(torch.full((1, 3, 8, 8), 128.0))
    assert int(refs.images[0][0, 0, 0]) == 128


def test_a_very_long_reference_is_cut_before_it_is_resized():
    long = torch.randint(0, 256, (3, 10, 20000), dtype=torch.uint8)
    pre = Preprocess(32, 36, (0.5,) * 3, (0.25,) * 3)
    x = references.from_tensor(long[None]).prepare(pre)
    assert x.shape == (1, 3, 32, 32)
    normal = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)  # ordinary shapes: exactly the usual result
    from torchvision.transforms import functional as F

    expected = F.center_crop(F.resize(normal, [36], antialias=True), [32, 32]).float() / 255
    assert torch.equal(references.from_tensor(normal[None]).prepare(pre)[0], expected)
