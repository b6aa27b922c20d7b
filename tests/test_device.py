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
