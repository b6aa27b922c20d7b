import threading

import numpy as np
import pytest
import torch

import vital_fv.matching as matching_mod
from vital_fv.matching import (
    argsort_rows,
    compute_prototypes,
    l2_norm,
    matched,
    ranks_ahead,
    resample_sorted,
    scaled_by_constant,
    sort_matching_loss,
    total_variation,
)


def _proto_of(z: torch.Tensor) -> torch.Tensor:
    return torch.sort(z, dim=-1).values.mean(0)


def test_loss_is_zero_when_sorted_values_match_and_positive_otherwise():
    torch.manual_seed(0)
    ref = torch.randn(1, 4, 50)
    proto = _proto_of(ref)
    shuffled = ref[..., torch.randperm(50)]
    assert sort_matching_loss(shuffled, proto).item() == pytest.approx(0.0, abs=1e-12)
    other = ref.clone()
    other[0, 2, 7] += 0.5
    assert sort_matching_loss(other, proto).item() > 1e-4


def test_loss_is_invariant_to_permuting_positions():
    torch.manual_seed(1)
    z = torch.randn(2, 3, 40)
    proto = _proto_of(torch.randn(5, 3, 40))
    perm = torch.randperm(40)
    assert torch.allclose(sort_matching_loss(z, proto), sort_matching_loss(z[..., perm], proto))


def test_loss_value_and_gradient_equal_brute_force_autograd_through_sort():
    torch.manual_seed(2)
    z = torch.randn(2, 3, 17, dtype=torch.float64, requires_grad=True)
    proto = _proto_of(torch.randn(4, 3, 17, dtype=torch.float64))
    ours = sort_matching_loss(z, proto)
    (g_ours,) = torch.autograd.grad(ours.sum(), z)
    brute = (torch.sort(z, dim=-1).values - proto).pow(2).mean(dim=(1, 2))
    (g_brute,) = torch.autograd.grad(brute.sum(), z)
    assert torch.allclose(ours, brute)
    assert torch.allclose(g_ours, g_brute)


def test_batch_items_are_independent():
    torch.manual_seed(3)
    z = torch.randn(3, 2, 30, requires_grad=True)
    proto = _proto_of(torch.randn(4, 2, 30))
    loss = sort_matching_loss(z, proto)
    (g,) = torch.autograd.grad(loss[1], z)
    assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0 and g[1].abs().sum() > 0
    alone = sort_matching_loss(z[1:2].detach(), proto)
    assert torch.allclose(alone, loss[1:2].detach())


def test_per_item_prototypes():
    torch.manual_seed(4)
    a, b = torch.randn(1, 2, 20), torch.randn(1, 2, 20)
    protos = torch.stack([_proto_of(a), _proto_of(b)])
    loss = sort_matching_loss(torch.cat([a, b]), protos)
    assert torch.allclose(loss, torch.zeros(2), atol=1e-12)


def test_resampling_keeps_quantiles_and_never_truncates():
    ref = torch.linspace(0, 1, 101).view(1, 101)
    down = resample_sorted(ref, 11)
    assert torch.allclose(down, torch.linspace(0, 1, 11).view(1, 11), atol=1e-6)
    up = resample_sorted(torch.tensor([[0.0, 10.0]]), 5)
    assert torch.allclose(up, torch.tensor([[0.0, 2.5, 5.0, 7.5, 10.0]]))
    # generated features at another resolution from the same distribution match with low loss
    torch.manual_seed(5)
    proto = torch.sort(torch.rand(3, 4000), dim=-1).values
    z = torch.rand(1, 3, 900)
    assert sort_matching_loss(z, proto).item() < 1e-3
    assert sort_matching_loss(z + 0.3, proto).item() > 0.05


def test_argsort_rows_is_an_exact_sort_with_relu6_ties():
    torch.manual_seed(6)
    x = (torch.randn(8, 5000) * 4).clamp(0, 6)  # many exact 0s and 6s, as after ReLU6
    x[3] = 2.0  # a constant row
    idx = argsort_rows(x)
    assert torch.equal(torch.gather(x, 1, idx), torch.sort(x, dim=-1).values)
    assert torch.equal(torch.sort(idx, dim=-1).values, torch.arange(5000).expand(8, -1))


def test_prototypes_are_mean_of_sorted_features(tiny_spec):
    torch.manual_seed(7)
    images = torch.randn(5, 3, 32, 32)
    protos = compute_prototypes(tiny_spec.module, ["act1"], images, batch_size=2)
    with torch.no_grad():
        direct = tiny_spec.module.act1(tiny_spec.module.conv1(images)).flatten(2)
    assert torch.allclose(protos["act1"], torch.sort(direct, dim=-1).values.mean(0), atol=1e-6)


def test_regularizers_match_their_definitions():
    x = torch.zeros(2, 3, 4, 4)
    x[1, :, :, 2:] = 1.0
    tv = total_variation(x)
    assert tv[0] == 0
    assert tv[1].item() == pytest.approx(2 * np.sqrt(3 * 4))  # one vertical edge, counted in both directions
    assert l2_norm(x)[1].item() == pytest.approx(np.sqrt(3 * 4 * 2))


def test_argsort_rows_orders_negative_values_and_signed_zeros():
    torch.manual_seed(8)
    x = torch.randn(6, 3000) * 1e3
    x[0, :10] = -0.0
    x[0, 10:20] = 0.0
    x[1, :5] = torch.tensor([-3.4e38, 3.4e38, -1e-45, 1e-45, 0.0])
    idx = argsort_rows(x)
    assert torch.equal(torch.gather(x, 1, idx), torch.sort(x, dim=-1).values)


def _net_and_proto():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.Conv2d(8, 4, 3))
    return net, torch.randn(2, 3, 30, 30), torch.sort(torch.randn(8, 900), dim=-1).values


def _plain_loss_and_grad(net, x, proto):  # noqa: ANN001
    """The loss of layer "1" made with no sort ahead, and the input's gradient."""
    from vital_fv.features import capture

    xb = x.clone().requires_grad_()
    with capture(net, ["1"]) as feats:
        net(xb)
        loss = sort_matching_loss(feats["1"].flatten(2), proto)
        loss.sum().backward()
    return loss, xb.grad


def test_ranks_sorted_during_the_forward_give_the_same_loss_and_gradient():
    """The sort started in a second thread as the layer's output is made is the one the loss would have made."""
    from vital_fv.features import capture

    net, x, proto = _net_and_proto()
    with ranks_ahead("cpu") as ranks, capture(net, ["1"], on_output=ranks.started) as feats:
        xa = x.clone().requires_grad_()
        net(xa)
        za = feats["1"].flatten(2)
        order = ranks.take("1", za)
        assert order is not None
        loss_a = sort_matching_loss(za, proto, order=order)
        loss_a.sum().backward()
    loss_b, grad_b = _plain_loss_and_grad(net, x, proto)
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(xa.grad, grad_b)


def test_ranks_sorted_ahead_are_not_used_for_a_changed_or_other_tensor():
    with ranks_ahead("cpu") as ranks:
        out = torch.randn(1, 4, 64, 64)
        ranks.started("a", out)
        out.add_(1.0)  # changed in place after the sort began
        assert ranks.take("a", out.flatten(2)) is None
        ranks.started("a", out)
        assert ranks.take("a", out.flatten(2) * 2) is None  # another tensor
        ranks.started("a", out)
        assert ranks.take("a", out.flatten(2)) is not None
        assert ranks.take("a", out.flatten(2)) is None  # each sort is taken once
    with ranks_ahead("cpu", enabled=False) as off:
        off.started("a", out)
        assert off.take("a", out.flatten(2)) is None


def test_features_sorted_ahead_and_scaled_by_a_constant_give_the_loss_of_the_product():
    """LRP's path: A ⊙ R̂ made (and its sort started) as the relevance arrives;
    the loss then takes that product with A's gradient through it: the same loss and gradient as ``a * w``."""
    torch.manual_seed(0)
    a0, w = torch.randn(2, 8, 900), torch.rand(2, 8, 900)
    proto = torch.sort(torch.randn(8, 900), dim=-1).values
    with ranks_ahead("cpu") as ranks:
        a = a0.clone().requires_grad_()
        product = a.detach() * w
        ranks.started_features("l", product)
        z = scaled_by_constant(a, w, product)
        order = ranks.take("l", z)
        assert order is not None and torch.equal(order, argsort_rows(product.reshape(-1, 900)))
        loss_a = sort_matching_loss(z, proto, order=order)
        loss_a.sum().backward()
    b = a0.clone().requires_grad_()
    loss_b = sort_matching_loss(b * w, proto)
    loss_b.sum().backward()
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(a.grad, b.grad)


@pytest.fixture
def torch_threads():
    """Sets torch's intra-op threads for a test and puts the caller's number back."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _made_where(monkeypatch) -> list[str]:  # noqa: ANN001
    """The names of the threads ``matching.matched`` runs in, from now on."""
    where: list[str] = []
    real = matching_mod.matched

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003
        where.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(matching_mod, "matched", spy)
    return where


def test_the_sort_thread_makes_the_loss_parts_at_one_torch_thread_with_the_same_loss_and_gradient(
        torch_threads, monkeypatch):
    """At one torch thread the targets, the difference and the value are made beside the forward; the loss and the
    image gradient are the bits the loss makes on its own; a prototype other than the layer's is matched here."""
    from vital_fv.features import capture

    torch_threads(1)
    net, x, proto = _net_and_proto()
    where = _made_where(monkeypatch)
    with ranks_ahead("cpu", protos={"1": proto}) as ranks, capture(net, ["1"], on_output=ranks.started) as feats:
        xa = x.clone().requires_grad_()
        net(xa)
        za = feats["1"].flatten(2)
        made = ranks.take_matched("1", za, proto)
        assert where == ["vital-sort_0"]
        assert torch.equal(made.targets, matched(za, proto).targets)
        loss_a = sort_matching_loss(za, proto, made=made)
        loss_a.sum().backward()
        net(x)
        other = proto + 1.0
        made_other = ranks.take_matched("1", feats["1"].flatten(2), other)
        assert where[-1] == "MainThread"
        assert torch.equal(made_other.diff, matched(feats["1"].flatten(2), other).diff)
    loss_b, grad_b = _plain_loss_and_grad(net, x, proto)
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(xa.grad, grad_b)


def test_at_two_torch_threads_the_sort_thread_runs_numpy_only(torch_threads, monkeypatch):
    """Torch work in the thread would start a second OpenMP team beside the forward's: only the sort runs there,
    the loss parts are made by the caller and nothing is made ahead."""
    from vital_fv.features import capture

    torch_threads(2)
    net, x, proto = _net_and_proto()
    where = _made_where(monkeypatch)
    with ranks_ahead("cpu", protos={"1": proto}) as ranks, capture(net, ["1"], on_output=ranks.started) as feats:
        net(x)
        made = ranks.take_matched("1", feats["1"].flatten(2), proto)
        assert made is not None and where == ["MainThread"]
        assert torch.equal(made.diff, matched(feats["1"].flatten(2), proto).diff)
        assert ranks.started_making("l", lambda: (torch.ones(1, 8, 900),)) is None
