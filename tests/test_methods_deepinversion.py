import pytest
import torch
from torch import nn

from vital_fv import ClassTarget, Job, VitalError, load_model
from vital_fv.methods import run_method
from vital_fv.methods.deepinversion import bn_statistics_loss
from vital_fv.zoo import Preprocess


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def _spec(module, size=32):
    return load_model(module, preprocess=Preprocess(size, size, (0.5,) * 3, (0.25,) * 3),
                      class_names=["a", "b", "c", "d"][: module.fc.out_features], name="tiny")


def test_bn_statistics_loss_is_zero_on_the_batch_that_gave_the_statistics():
    torch.manual_seed(0)
    net = BNNet()
    x = torch.randn(6, 3, 16, 16)
    stats = []
    hooks = [m.register_forward_hook(lambda m, i, o: stats.append((i[0].mean((0, 2, 3)),
                                                                 i[0].var((0, 2, 3), unbiased=False))))
             for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    net.train()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn, (mean, var) in zip(bns, stats, strict=True):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    net.eval()
    with torch.no_grad():
        assert bn_statistics_loss(net, x).item() < 1e-4
        assert bn_statistics_loss(net, torch.randn(6, 3, 16, 16) * 3 + 1).item() > 0.1


def test_deepinversion_runs_on_a_bn_model_and_refuses_models_without_bn(tiny_spec):
    spec = _spec(BNNet())
    res = run_method("deepinversion", spec, [Job(ClassTarget(0), None, 0), Job(ClassTarget(2), None, 1)],
                       steps=20, progress=False)
    assert [r.record["target"]["index"] for r in res] == [0, 2]
    assert res[1].record["loss"]["objective"][-1] < res[1].record["loss"]["objective"][0]  # cross-entropy falls
    with pytest.raises(VitalError, match="no BatchNorm layer"):
        run_method("deepinversion", tiny_spec, [Job(ClassTarget(0), None, 0)], steps=1, progress=False)
