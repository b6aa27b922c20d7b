import numpy as np
import pytest
import torch
import torchvision

from vital_fv import references
from vital_fv.errors import VitalError
from vital_fv.zoo import PRESETS, load_model, read_state_dict


def _classify(spec, refset):
    with torch.no_grad():
        x = spec.preprocess.normalize(refset.prepare(spec.preprocess))
        return spec.module(x).softmax(-1)


@pytest.mark.parametrize("name,index", [("espresso", 967), ("tripod", 872)])
def test_lite0_real_weights_classify_the_bundled_photos(lite0, name, index):
    probs = _classify(lite0, references.bundled(name, augment=False))
    assert probs.argmax(-1).item() == index
    assert probs[0, index] > 0.5


def test_lite0_spec_is_frozen_with_lite_preprocessing(lite0):
    assert not lite0.module.training
    assert not any(p.requires_grad for p in lite0.module.parameters())
    assert lite0.preprocess.input_size == 224
    assert lite0.preprocess.mean[0] == pytest.approx(127 / 255)
    assert lite0.class_names[967] == "espresso"
    assert lite0.preset == PRESETS["efficientnet_lite0"]


def test_torchvision_model_from_a_state_dict_file_reproduces_logits(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    spec = load_model("resnet18", weights=path, layers=["layer1", "layer2"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(spec.module(x), ref(x), atol=1e-5)
    assert spec.class_names[1] == "goldfish"
    assert spec.preset.layers == ("layer1", "layer2")
    # a full checkpoint holding a DataParallel state dict works too
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)
    spec2 = load_model("resnet18", weights=ckpt)
    with torch.no_grad():
        assert torch.allclose(spec2.module(x), ref(x), atol=1e-5)


def test_paper_presets_resolve_for_resnet50(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    spec = load_model("resnet50", weights=path)
    assert spec.preset.layers == ("conv1", "layer1", "layer2", "layer3", "layer4")
    assert spec.preprocess.mean == (0.485, 0.456, 0.406)


def test_mismatched_weights_name_the_missing_keys(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(VitalError, match=r"missing keys: fc\.bias.*unexpected keys: extra\.weight"):
        load_model("resnet18", weights=path)


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(VitalError, match="cannot read weights file .*junk.pth"):
        read_state_dict(path)
    with pytest.raises(VitalError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")


def test_no_weights_is_a_clear_error_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(VitalError, match="no weights for resnet50: pass --weights FILE"):
        load_model("resnet50")


def test_torchvision_cache_is_used_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    enum = torchvision.models.get_model_weights("resnet18")
    name = enum.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (tmp_path / "checkpoints").mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "checkpoints" / name)
    spec = load_model("resnet18", layers=["layer1"])
    assert spec.weights_source.endswith(name)


def test_unknown_model_suggests_close_names():
    with pytest.raises(VitalError, match="unknown model 'resnet5'.*resnet50"):
        load_model("resnet5")


def test_any_module_with_layers_by_name(tiny_spec):
    assert tiny_spec.preset.layers == ("act1", "act2")
    assert tiny_spec.preset.weights == (1.0, 1.0)
    assert np.isclose(tiny_spec.preprocess.std[0], 0.25)
