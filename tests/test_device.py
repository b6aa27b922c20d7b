"""The caller's model is left as it was: mode (every submodule), gradient flags, BatchNorm statistics, device."""

import pytest
import torch
from torch import nn

import vital_fv
from vital_fv import UnitTarget, VitalError, metrics, references
from vital_fv.device import frozen_on, resolve_device
from vital_fv.result import png_bytes
from vital_fv.zoo import Preprocess, load_model


class Training(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def test_a_model_mid_training_is_left_training(tmp_path):
    module = Training().train()
    module.body[3].eval()  # a submodule in its own mode stays so too
    state = {k: v.clone() for k, v in module.state_dict().items()}
    spec = load_model(module, preprocess=Preprocess(16, 16, (0.5,) * 3, (0.25,) * 3), class_names=["a", "b", "c"],
                      layers=["body.0", "body.2"])
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(torch.rand(3, 20, 20)))
    vital_fv.visualize(spec, 1, tmp_path, steps=2, progress=False)
    vital_fv.visualize(spec, 1, method="fourier", steps=2, progress=False)
    references.from_pool(tmp_path, spec, 0, n=2, progress=False)
    references.mine(spec, UnitTarget("body.2", 0), tmp_path, patch=8, progress=False)
    metrics.logits_and_features(spec, torch.rand(2, 3, 16, 16))
    assert spec.last_hidden_layer() == "body" and spec.top5(torch.rand(1, 3, 16, 16))
    assert module.training and not module.body[3].training and module.body[1].training
    assert all(p.requires_grad for p in module.parameters())
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k]), k  # BatchNorm never saw a batch in training mode


def test_frozen_on_restores_after_an_exception_and_devices_are_checked():
    module = Training().train()
    with pytest.raises(RuntimeError), frozen_on(module):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
        raise RuntimeError
    assert module.training and all(p.requires_grad for p in module.parameters())
    for bad, message in [("tpu", "is not a device"), ("meta", "is not a device"), ("cuda:x", "is not a device"),
                         (torch.device("meta"), "not supported here")]:
        with pytest.raises(VitalError, match=message):
            resolve_device(bad)
    assert resolve_device("cpu").type == "cpu"


class Stages(nn.Module):
    """Two BatchNorm stages and a dropout, so a forward pass in training mode would change the state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Dropout(0.5))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_every_public_entry_leaves_a_training_model_bit_identical(tmp_path):
    """Each public call on a module in training mode (and one submodule in its own mode): the whole state dict is
    bit-identical after it, every submodule keeps its mode and every parameter its gradient flag."""
    from vital_fv import circuits, concepts, polysemantic
    from vital_fv.evaluate import evaluate

    torch.manual_seed(0)
    module = Stages().train()
    module.block[3].eval()
    spec = load_model(module, preprocess=Preprocess(16, 16, (0.5,) * 3, (0.25,) * 3), class_names=["a", "b", "c"],
                      layers=["stem", "block"], name="stages")
    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(8):
        (photos / f"{i}.png").write_bytes(png_bytes(torch.rand(3, 24, 24, generator=g)))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    modes = {n: m.training for n, m in module.named_modules()}

    def unchanged(what: str) -> None:
        changed = [k for k, v in module.state_dict().items() if not torch.equal(v, state[k])]
        assert not changed, f"{what} changed {len(changed)} tensors: {changed[:3]}"
        assert {n: m.training for n, m in module.named_modules()} == modes, what
        assert all(p.requires_grad for p in module.parameters()), what

    direction = vital_fv.DirectionTarget("block", torch.rand(8) + 0.1)
    for target in [1, UnitTarget("block", 2), UnitTarget("block", 2, (1, 1)), direction]:
        vital_fv.visualize(spec, target, photos, steps=1, progress=False, out=tmp_path / "res", overwrite=True)
        unchanged(f"visualize {target}")
    vital_fv.visualize(spec, UnitTarget("block", 2), images=photos, steps=1, n_refs=2, progress=False)
    unchanged("visualize --images")
    references.mine(spec, UnitTarget("block", 1), photos, patch=8, progress=False)
    unchanged("mine")
    found = concepts.extract_concepts(spec, 0, photos, n_concepts=2, patch=8, top=3, progress=False)
    unchanged("concepts")
    vital_fv.visualize(spec, found.target(0), found.references(0), steps=1, progress=False)
    unchanged("a concept's visualization")
    dis = polysemantic.disentangle(spec, UnitTarget("block", 0), photos, clusters=2, patch=8, progress=False)
    polysemantic.visualize_clusters(spec, dis, top=3, steps=1, progress=False)
    unchanged("disentangle")
    ranking = circuits.rank_channels(spec, 1, photos, progress=False)
    circuits.build_circuit(spec, ranking, photos, top=2, n_refs=2, steps=1, patch=8, progress=False)
    unchanged("circuit")
    evaluate(tmp_path / "res", tmp_path / "report", judge=spec, fid_model=spec, n_boot=2, plots=False,
             models={"stages": spec})
    unchanged("evaluate")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_model_in_another_dtype_runs_every_method_in_its_own_dtype_and_is_left_as_it_was(dtype, tmp_path):
    torch.manual_seed(0)
    module = Stages().to(dtype).eval()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    spec = load_model(module, preprocess=Preprocess(16, 16, (0.5,) * 3, (0.25,) * 3), class_names=["a", "b", "c"],
                      layers=["stem", "block"], name="stages")
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(torch.rand(3, 20, 20)))
    runs = [("vital", 1), ("vital", UnitTarget("block", 2))] + [(m, 1) for m in ("fourier", "maco", "deepinversion")]
    for method, target in runs:
        r = vital_fv.visualize(spec, target, tmp_path if method == "vital" else None, method=method, steps=2,
                               n_refs=3, progress=False)
        assert r.status == "complete" and r.image.dtype == torch.float32 and torch.isfinite(r.image).all(), method
    assert spec.top5(torch.rand(1, 3, 16, 16))
    assert all(p.dtype == dtype for p in module.parameters())
    assert not module._forward_hooks and not module._forward_pre_hooks  # the dtype bridge is gone after each run
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k]), k
