import pytest
import torch
from reference_helpers import write_color
from torch import nn

from vital_fv import references
from vital_fv.errors import VitalError
from vital_fv.zoo import Preprocess, load_model


def test_folder_skips_corrupt_files_with_a_warning_naming_them(tmp_path):
    write_color(tmp_path, "a.png", (255, 0, 0))
    write_color(tmp_path, "b.jpg", (0, 255, 0))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        refs = references.from_folder(tmp_path, n=10)
    assert len(refs) == 2 and refs.count == 2
    assert all(len(h) == 64 for h in refs.hashes)


def test_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(VitalError, match="holds no files"):
        references.from_folder(tmp_path)
    with pytest.raises(VitalError, match="does not exist"):
        references.from_folder(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(VitalError, match="no readable images"), pytest.warns(UserWarning):
        references.from_folder(tmp_path)


def test_folder_samples_n_images_repeatably(tmp_path):
    for i in range(6):
        write_color(tmp_path, f"{i}.png", (i * 40, 0, 0))
    a = references.from_folder(tmp_path, n=3, seed=1)
    b = references.from_folder(tmp_path, n=3, seed=1)
    assert a.sources == b.sources and len(a) == 3


def test_prepare_resizes_and_center_crops_to_the_model_input():
    img = torch.zeros(1, 3, 60, 100, dtype=torch.uint8)
    img[..., 40:60] = 255  # a bright band in the horizontal middle
    refs = references.from_tensor(img)
    x = refs.prepare(Preprocess(32, 36, (0.5,) * 3, (0.5,) * 3))
    assert x.shape == (1, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert x[0, :, :, 16].mean() > 0.9 and x[0, :, :, 0].mean() < 0.1


def test_augmentation_makes_up_the_requested_count_and_is_recorded():
    refs = references.bundled("espresso", n=12)
    x = refs.prepare(Preprocess(64, 72, (0.5,) * 3, (0.5,) * 3))
    assert x.shape == (12, 3, 64, 64)
    assert not torch.equal(x[1], x[2])
    assert torch.equal(x, refs.prepare(Preprocess(64, 72, (0.5,) * 3, (0.5,) * 3)))
    info = refs.describe()
    assert info["augmented"] and info["originals"] == 1 and info["count"] == 12
    plain = references.bundled("espresso", n=12, augment=False)
    assert plain.count == 1 and not plain.describe()["augmented"]


def test_unknown_bundled_class_lists_the_bundled_ones():
    with pytest.raises(VitalError, match="no bundled photo for 'expresso'.*espresso"):
        references.bundled("expresso")


class RedNet(nn.Module):
    """Class 0's logit is the image's mean red value: the reddest images are the most 'class 0'."""

    def forward(self, x):
        red = x[:, 0].mean(dim=(1, 2)) * 10
        return torch.stack([red, torch.zeros_like(red)], dim=1)


def test_pool_picks_the_images_the_model_rates_most_probable(tmp_path):
    for i, r in enumerate([10, 250, 120, 200, 30]):
        write_color(tmp_path, f"img{i}.png", (r, 0, 0))
    spec = load_model(RedNet(), class_names=["red", "other"],
                      preprocess=Preprocess(16, 16, (0.0,) * 3, (1.0,) * 3))
    refs = references.from_pool(tmp_path, spec, class_index=0, n=2, progress=False)
    assert [s.rsplit("/", 1)[-1] for s in refs.sources] == ["img1.png", "img3.png"]
    assert refs.info["pool_size"] == 5
