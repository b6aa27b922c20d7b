import numpy as np
import pytest
import torch
import torchvision

from vital_fv import references
from vital_fv.errors import VitalError
from vital_fv.zoo import PRESETS, load_model


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
    # not one of torchvision's files: the default entry's preprocessing (V2: resize 232), and the record says so
    assert spec.preprocess.resize_size == 232
    assert "IMAGENET1K_V2" in spec.describe()["preprocess_source"]
    assert "not one of torchvision's" in spec.describe()["preprocess_source"]


def test_a_recognized_torchvision_file_takes_its_own_entrys_preprocessing(tmp_path, monkeypatch):
    from vital_fv.zoo import loaders as zoo  # where load_model reads _url_hash

    assert zoo._url_hash("https://download.pytorch.org/models/resnet50-0676ba61.pth") == "0676ba61"
    assert zoo._url_hash("https://x/vit_l_16_lc_swag-4d563306.pth") == "4d563306"
    assert zoo._url_hash("https://x/model.pth") == "-"
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    digest = zoo.file_sha256(path)
    # Pretend this file is torchvision's ResNet50 V1 download (its name carries the sha256 prefix).
    real = zoo._url_hash
    monkeypatch.setattr(zoo, "_url_hash", lambda url: digest[:8] if "0676ba61" in url else real(url))
    spec = load_model("resnet50", weights=path)
    assert spec.preprocess.resize_size == 256  # V1's, where the default (V2) would say 232
    assert spec.describe()["preprocess_source"].startswith("torchvision ResNet50_Weights.IMAGENET1K_V1")
    assert "hash matches" in spec.describe()["preprocess_source"]


def test_a_swag_vit_file_builds_the_model_for_its_own_input_size(tmp_path, monkeypatch):
    from vital_fv.zoo import loaders as zoo  # where load_model reads _url_hash

    path = tmp_path / "vb16_swag.pth"
    torch.save(torchvision.models.vit_b_16(weights=None, image_size=384).state_dict(), path)
    digest = zoo.file_sha256(path)
    real = zoo._url_hash
    swag = torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    monkeypatch.setattr(zoo, "_url_hash", lambda url: digest[:8] if url == swag.url else real(url))
    spec = load_model("vit_b_16", weights=path)
    assert spec.preprocess.input_size == 384 and spec.module.image_size == 384 and spec.fixed_size
    assert spec.preprocess.interpolation == "bicubic"


def test_mismatched_weights_name_the_missing_keys(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(VitalError, match=r"missing keys: fc\.bias.*unexpected keys: extra\.weight"):
        load_model("resnet18", weights=path)


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


@pytest.mark.slow
def test_vit_needs_its_exact_input_size_and_can_leave_the_class_token_out():
    from vital_fv import ClassTarget, VitalError, visualize
    from vital_fv.features import as_channels_positions

    spec = load_model("vit_l_32", random_init=True)
    refs = references.from_tensor(torch.rand(1, 3, 64, 64))
    with pytest.raises(VitalError, match="takes exactly 224x224"):
        visualize(spec, ClassTarget(1), refs, size=256, steps=1, progress=False)
    assert spec.prefix_tokens == 1 and spec.skip_tokens == 0
    spec.class_token = False
    assert spec.skip_tokens == 1
    tokens = torch.arange(2 * 50 * 4.0).view(2, 50, 4)
    assert as_channels_positions(tokens, spec.skip_tokens).shape == (2, 4, 49)
    r = visualize(spec, ClassTarget(1), refs, steps=1, progress=False, cache=False)
    assert r.record["model"]["class_token_matched"] is False


def test_timm_models_by_name_with_an_automatic_preset(tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    spec = load_model("timm:resnet18", weights=path)
    assert spec.preset.layers == ("act1", "layer1", "layer2", "layer3", "layer4")
    assert spec.preset.source.startswith("automatic")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(spec.module(x), ref(x), atol=1e-5)
    with pytest.raises(VitalError, match="needs --weights FILE"):
        load_model("timm:resnet18")
    with pytest.raises(VitalError, match="unknown timm model 'resnet1'.*timm:resnet18"):
        load_model("timm:resnet1", weights=path)


def test_timm_vit_reads_tokens_and_fixes_its_size():
    spec = load_model("timm:vit_tiny_patch16_224", random_init=True)
    assert spec.prefix_tokens == 1 and spec.fixed_size
    assert spec.preset.layers == ("patch_embed", "blocks.3", "blocks.6", "blocks.8", "blocks.11")


def test_python_api_types_and_input_sizes_are_checked_with_advice():
    from torch import nn

    from vital_fv import visualize

    with pytest.raises(VitalError, match="load_model takes a zoo name or an nn.Module, not Tensor"):
        load_model(torch.zeros(3))
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))  # 32 px input only
    with pytest.raises(VitalError, match="fails on a 1x3x224x224 input.*preprocess=Preprocess"):
        load_model(small)
    with pytest.raises(VitalError, match="model must be a ModelSpec or a zoo name, not Tensor"):
        visualize(torch.zeros(3), 1)
