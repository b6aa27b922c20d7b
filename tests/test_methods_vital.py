import math

import pytest
import torch
from torch import nn

from vital_fv import ClassTarget, Job, NonFiniteLossError, references, visualize, visualize_batch
from vital_fv.errors import VitalError
from vital_fv.methods import vital as opt_mod
from vital_fv.zoo import LayerPreset


@pytest.fixture
def refs_a():
    torch.manual_seed(10)
    return references.from_tensor(torch.rand(4, 3, 40, 40) * 0.5)


@pytest.fixture
def refs_b():
    torch.manual_seed(11)
    return references.from_tensor(0.5 + torch.rand(3, 3, 40, 40) * 0.5)


def test_a_few_steps_lower_the_matching_loss(tiny_spec, refs_a):
    r = visualize(tiny_spec, 1, refs_a, preset="quick", steps=40, progress=False)
    for curve in r.record["loss"].values():
        assert len(curve) == 40
        assert curve[-1] < 0.6 * curve[0]
    assert r.image.shape == (3, 32, 32) and r.image.min() >= 0 and r.image.max() <= 1
    assert r.record["status"] == "complete"
    assert r.record["target"] == {"kind": "class", "index": 1, "name": "one"}
    assert r.record["layers"]["layers"] == ["act1", "act2"]
    assert len(r.record["top5"]) == 4  # tiny model has 4 classes
    assert r.alpha.shape == (3, 32, 32) and r.alpha.sum() > 0  # accumulated |d loss / d x|
    a = r.transparency(percentile=98)
    assert a.max() == pytest.approx(1.0) and (a == 1.0).float().mean() >= 0.01  # top 2% clipped to 1


def test_batch_items_are_independent_of_their_neighbours(tiny_spec, refs_a, refs_b):
    # Few steps: Adam turns float noise in near-zero gradients (batched vs single convolutions) into lr-sized
    # steps, so long runs drift apart chaotically even though nothing is shared; a real leak shows at once.
    kw = dict(preset="quick", steps=2, progress=False)
    alone = visualize(tiny_spec, 1, refs_a, seed=5, ref_weighting="none", **kw)  # the batch's refs are unweighted
    batch = visualize_batch(
        tiny_spec, [Job(ClassTarget(2), refs_b, 3), Job(ClassTarget(1), refs_a, 5)], **kw
    )
    assert torch.allclose(batch[1].image, alone.image, atol=2e-3)
    for layer, curve in alone.record["loss"].items():
        assert batch[1].record["loss"][layer] == pytest.approx(curve, rel=1e-4)
        assert batch[0].record["loss"][layer] != pytest.approx(curve, rel=1e-2)
    assert not torch.allclose(batch[0].image, batch[1].image)
    assert batch[0].record["target"]["index"] == 2 and batch[0].record["seed"] == 3


def test_seeds_are_explicit_and_repeatable(tiny_spec, refs_a):
    kw = dict(preset="quick", steps=5, progress=False)
    a, b, c = (visualize(tiny_spec, 0, refs_a, seed=s, **kw) for s in (1, 1, 2))
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)


def test_second_run_reuses_cached_prototypes_without_a_reference_forward(tiny_spec, refs_a, monkeypatch):
    calls = []
    real = opt_mod.compute_prototypes
    monkeypatch.setattr(opt_mod, "compute_prototypes", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = visualize(tiny_spec, 0, refs_a, steps=3, progress=False)
    second = visualize(tiny_spec, 0, refs_a, steps=3, progress=False)
    assert len(calls) == 1
    assert first.record["prototypes"]["cache"] == "miss" and second.record["prototypes"]["cache"] == "hit"
    assert torch.equal(first.image, second.image)


def test_generated_resolution_may_differ_from_the_references(tiny_spec, refs_a):
    r = visualize(tiny_spec, 0, refs_a, steps=20, size=48, progress=False)
    assert r.image.shape == (3, 48, 48)
    assert r.record["loss"]["act1"][-1] < r.record["loss"]["act1"][0]


def test_ctrl_c_keeps_the_current_image_marked_interrupted(tiny_spec, refs_a):
    seen = []

    def interrupt_at_fifth(_m, _i, _o):
        seen.append(1)
        if len(seen) == 6:  # a reference forward, a shape probe, then the steps
            raise KeyboardInterrupt

    handle = tiny_spec.module.conv1.register_forward_hook(interrupt_at_fifth)
    try:
        r = visualize(tiny_spec, 0, refs_a, steps=50, progress=False, cache=False, ref_weighting="none")
    finally:
        handle.remove()
    assert r.status == "interrupted"
    assert r.record["steps_done"] == 3
    assert torch.isfinite(r.image).all()


def test_non_finite_loss_stops_with_an_error_and_keeps_the_last_finite_image(tiny_spec, refs_a):
    bad = LayerPreset(("act1",), (math.inf,))
    with pytest.raises(NonFiniteLossError, match="non-finite") as info:
        visualize(tiny_spec, 0, refs_a, steps=10, layers=bad, progress=False)
    (r,) = info.value.results
    assert r.status == "nonfinite" and torch.isfinite(r.image).all()


def test_model_state_and_hooks_are_restored_even_after_an_exception(tiny_spec, refs_a):
    m = tiny_spec.module
    m.train()
    m.conv1.weight.requires_grad_(True)
    m.conv2.weight.requires_grad_(False)

    def boom(*_a):
        raise RuntimeError("boom")

    handle = m.act2.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        visualize(tiny_spec, 0, refs_a, steps=3, progress=False)
    handle.remove()
    assert m.training and m.conv1.weight.requires_grad and not m.conv2.weight.requires_grad
    assert sum(len(x._forward_hooks) for x in m.modules()) == 0


def test_balanced_preset_runs_by_name_and_a_short_run_keeps_its_warm_up_in_proportion(tiny_spec, refs_a):
    rec = visualize(tiny_spec, 0, refs_a, preset="balanced", steps=10, progress=False).record["optimizer"]
    assert rec["name"] == "balanced" and rec["steps"] == 10 and rec["warmup"] == 2  # 50 of 1000, cut to 10 // 5
    assert rec["lr"] == opt_mod.OPTIM_PRESETS["paper"].lr  # the paper's learning rate, quick's low-pass
    assert rec["grad_blur"] == opt_mod.OPTIM_PRESETS["quick"].grad_blur > 0


def test_model_without_a_preset_needs_layers(tiny_spec, refs_a):
    from vital_fv import VitalError

    tiny_spec.preset = None
    with pytest.raises(VitalError, match="no default layer preset: give layers"):
        visualize(tiny_spec, 0, refs_a, steps=1, progress=False)


@pytest.mark.slow
def test_quick_preset_on_real_lite0_makes_an_image_lite0_calls_espresso(lite0):
    r = visualize(lite0, ClassTarget("espresso"), references.bundled("espresso"), preset="quick", seed=0,
                  progress=False)
    assert r.top5[0]["name"] == "espresso", r.top5


@pytest.mark.slow
def test_the_class_comes_from_the_references_so_other_references_do_not_give_espresso(lite0):
    # With the matching alone the target enters only through the references: tripod photos must not yield an
    # espresso image. (The default on crops of one photo adds the class's logit, and the record says so.)
    r = visualize(lite0, ClassTarget("espresso"), references.bundled("tripod"), preset="quick", seed=0,
                  progress=False, options={"class_logit": 0})
    assert r.top5[0]["name"] != "espresso", r.top5
    assert r.record["optimizer"]["class_logit"] == 0 and r.record["references"]["crops"]["chosen_by"] == "evidence"


def test_unit_with_lrp_lowers_the_weighted_loss_and_records_relevance(tiny_spec, refs_a):
    from vital_fv.targets import UnitTarget

    unit = UnitTarget("act2", 3)
    r = visualize(tiny_spec, unit, refs_a, steps=30, lr=0.3, progress=False)  # relevance: lrp by default
    rec = r.record
    assert rec["target"]["kind"] == "unit" and rec["target"]["channel"] == 3 and "value" in rec["target"]
    assert rec["layers"]["layers"] == ["act1"]  # the layers below the unit
    assert rec["optimizer"]["jitter"] == 4  # 30 px at 224 px, scaled to the 32 px input
    assert rec["relevance"]["method"] == "lrp" and rec["relevance"]["references_used"] == refs_a.count
    curve = rec["loss"]["act1"]
    assert curve[-1] < 0.6 * curve[0]
    none = visualize(tiny_spec, unit, refs_a, steps=2, progress=False, relevance=None)
    assert none.record["relevance"] is None


def test_silent_unit_steps_fall_back_to_plain_matching_and_are_counted(tiny_spec, refs_a, monkeypatch):
    from vital_fv.targets import UnitTarget

    real = opt_mod.silent
    calls = {"n": 0}

    def silent_after_references(rel, start):
        calls["n"] += 1
        return real(rel, start) if calls["n"] == 1 else torch.ones_like(start, dtype=torch.bool)

    monkeypatch.setattr(opt_mod, "silent", silent_after_references)
    r = visualize(tiny_spec, UnitTarget("act2", 3), refs_a, steps=5, progress=False)
    assert r.record["relevance"]["silent_steps"] == 5


def test_unit_silent_on_every_reference_is_an_error(tiny_spec, refs_a):
    from vital_fv.errors import VitalError
    from vital_fv.targets import UnitTarget

    with torch.no_grad():
        tiny_spec.module.conv2.bias[5] = -1e4  # channel 5 never fires
    with pytest.raises(VitalError, match="silent on every reference"):
        visualize(tiny_spec, UnitTarget("act2", 5), refs_a, steps=2, progress=False)


def test_class_and_direction_targets_with_relevance(tiny_spec, refs_a):
    from vital_fv.targets import DirectionTarget

    r = visualize(tiny_spec, ClassTarget(1), refs_a, steps=3, progress=False, relevance="guided_backprop")
    assert r.record["relevance"]["method"] == "guided_backprop" and r.record["target"]["kind"] == "class"
    d = visualize(tiny_spec, DirectionTarget("act2", torch.rand(16), "concept"), refs_a, steps=3, progress=False)
    assert d.record["target"]["kind"] == "direction" and d.record["relevance"]["method"] == "lrp"
    assert not any(m._forward_hooks for m in tiny_spec.module.modules())


def test_relevance_units_run_on_every_zoo_family():
    """A unit with LRP, two steps, on random-weight members of the five families (the paper's, downsized where
    the architecture allows): the relevance copy is built, the loop runs, the record is complete."""
    import torchvision.models as tvm
    from torchvision.models.vision_transformer import VisionTransformer

    from vital_fv.features import capture
    from vital_fv.targets import UnitTarget
    from vital_fv.zoo import Preprocess, load_model

    torch.manual_seed(0)
    pre = Preprocess(64, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    vit = VisionTransformer(image_size=64, patch_size=16, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64)
    cases = [
        (tvm.resnet50(), ["conv1", "layer1", "layer2", "layer3"], "layer3.5"),
        (tvm.densenet121(), ["features.conv0", "features.denseblock1"], "features.denseblock2"),
        (tvm.convnext_tiny(), ["features.0", "features.1"], "features.3.2"),
        (vit, ["encoder.layers.encoder_layer_0"], "encoder.layers.encoder_layer_2"),
    ]
    refs = references.from_tensor(torch.rand(2, 3, 64, 64))
    for module, layers, layer in cases:
        spec = load_model(module, layers=layers, preprocess=pre, class_names=[], name=type(module).__name__)
        with torch.no_grad(), capture(module.eval(), [layer]) as feats:  # a channel that fires on the references
            module(pre.normalize(refs.prepare(pre)))
            acts = feats[layer].clamp(min=0)
            per_channel = acts.sum((0, 1)) if acts.dim() == 3 else acts.sum((0, 2, 3))  # tokens: (B, T, D)
            unit = UnitTarget(layer, int(per_channel.argmax()))
        if isinstance(module, VisionTransformer):
            spec.fixed_size = True
        r = visualize(spec, unit, refs, steps=2, progress=False, cache=False)
        rec = r.record
        assert rec["relevance"]["method"] == "lrp" and rec["steps_done"] == 2, type(module).__name__
        assert rec["relevance"]["family"] in ("resnet", "densenet", "convnext", "vit")
        assert all(abs(c - 1) < 0.05 for c in rec["relevance"]["conservation"].values()), rec["relevance"]


@pytest.mark.slow
def test_lite0_unit_visualization_activates_the_unit_like_its_references(lite0, tmp_path):
    """Real weights, bundled photos: VITAL + LRP for blocks.5.2:17 lifts the unit far above the optimizer's own
    random start and into the range of its top mined references."""
    from vital_fv.cli import main as cli
    from vital_fv.features import capture
    from vital_fv.params import init_pixels, item_generators
    from vital_fv.targets import UnitTarget

    assert cli(["photos", "--out", str(tmp_path / "photos")]) == 0
    unit = UnitTarget("blocks.5.2", 17)
    refs = references.mined_references(references.mine(lite0, unit, tmp_path / "photos", progress=False), k=10)
    r = visualize(lite0, unit, refs, preset="quick", seed=0, progress=False)
    value = r.record["target"]["value"]
    with torch.no_grad(), capture(lite0.module, [unit.layer]) as feats:
        lite0.module(lite0.preprocess.normalize(refs.prepare(lite0.preprocess)))
        ref_values = [float(unit.value(a)) for a in feats[unit.layer]]
        lite0.module(init_pixels(item_generators(range(8)), 224, torch.device("cpu")))
        start_values = [float(unit.value(a)) for a in feats[unit.layer]]
    assert value > max(start_values) + 0.75, (value, start_values)
    assert min(ref_values) <= value <= max(ref_values), (value, ref_values)


def test_gradient_low_pass_keeps_pixel_level_alternation_out_of_the_image(tiny_spec, refs_a):
    """From a flat grey start, the image is the sum of the updates: with grad_blur its power above half Nyquist
    is a fraction of the unblurred run's (the hatching of issue 14 is that power)."""
    from dataclasses import replace

    from vital_fv import metrics

    base = replace(opt_mod.OPTIM_PRESETS["quick"], init_std=0.0, grad_blur=0.0, jitter=0, warmup=0)
    kw = dict(steps=6, progress=False, size=48)
    sharp = visualize(tiny_spec, 1, refs_a, preset=base, **kw)
    blurred = visualize(tiny_spec, 1, refs_a, preset=replace(base, grad_blur=1.0), **kw)
    assert blurred.record["optimizer"]["grad_blur"] == 1.0
    hf_sharp = metrics.spectrum_stats(sharp.image)["hf_share"]
    hf_blurred = metrics.spectrum_stats(blurred.image)["hf_share"]
    assert hf_blurred < 0.5 * hf_sharp, (hf_blurred, hf_sharp)


def test_units_start_from_their_own_init_std_and_classes_keep_theirs(tiny_spec, refs_a):
    from dataclasses import replace

    from vital_fv.targets import UnitTarget

    preset = replace(opt_mod.OPTIM_PRESETS["quick"], init_std=1.0, unit_init_std=0.0)
    unit = visualize(tiny_spec, UnitTarget("act2", 3), refs_a, preset=preset, steps=1, lr=1e-4, progress=False)
    cls = visualize(tiny_spec, 1, refs_a, preset=preset, steps=1, lr=1e-4, progress=False)
    assert unit.record["optimizer"]["init_std"] == 0.0 and cls.record["optimizer"]["init_std"] == 1.0
    # One tiny step from a flat start: the unit image is still grey; the class image is the N(0, 1) start.
    assert float(unit.image.std()) < 0.01 < 0.1 < float(cls.image.std())


def test_unit_prior_pulls_to_grey_only_where_the_loss_has_little_gradient():
    from dataclasses import replace

    opt = replace(opt_mod.OPTIM_PRESETS["quick"], grad_blur=0.0, unit_prior=0.5, unit_smooth=0.0)
    x = torch.ones(1, 3, 8, 8, requires_grad=True)
    g = torch.zeros(1, 3, 8, 8)
    g[..., :4] = 1.0  # the loss acts on the left half only; mean |g| = 0.5
    x.grad = g.clone()
    opt_mod._gradient_shaping(x, [opt])()
    assert torch.allclose(x.grad[..., 4:], torch.full_like(x.grad[..., 4:], 0.25))  # 0.5 x 0.5 x pixel 1
    assert torch.allclose(x.grad[..., :4], torch.full_like(x.grad[..., :4], 1.25))
    assert opt_mod._gradient_shaping(x, [replace(opt, unit_prior=0.0)]) is None


@pytest.mark.parametrize("field", ["grad_blur", "unit_prior", "unit_smooth", "channel_smooth"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), "2"])
def test_gradient_shaping_weights_are_checked_when_the_preset_is_made(field, bad):
    from dataclasses import replace

    with pytest.raises(VitalError, match=f"{field} must be a finite number >= 0"):
        replace(opt_mod.OPTIM_PRESETS["quick"], **{field: bad})


def test_unit_smooth_pulls_pixel_noise_flat_and_leaves_flat_colour_alone():
    from dataclasses import replace

    opt = replace(opt_mod.OPTIM_PRESETS["quick"], grad_blur=0.0, unit_smooth=1.0)
    assert opt_mod._gradient_shaping(torch.zeros(1, 3, 8, 8), [replace(opt, unit_smooth=0.0)]) is None
    checker = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2 * 2.0 - 1.0  # +-1 pixel alternation
    x = torch.stack([checker, torch.full((8, 8), 0.7), checker]).unsqueeze(0).requires_grad_(True)
    g = torch.zeros(1, 3, 8, 8)
    g[..., :, :4] = 1.0  # the loss acts on the left half only
    x.grad = g.clone()
    opt_mod._gradient_shaping(x, [opt])()
    quiet = x.grad[..., 2:6, 5:7]  # right half, away from the borders
    # The noisy channels are pushed against their alternation (a descent step flattens them) ...
    assert (torch.sign(quiet[:, [0, 2]]) == torch.sign(x.detach()[..., 2:6, 5:7][:, [0, 2]])).all()
    assert float(quiet[:, [0, 2]].abs().min()) > 0.1
    # ... the flat channel feels no pull, wherever the loss is quiet: its colour stays.
    assert torch.allclose(x.grad[0, 1, :, 4:], torch.zeros(8, 4), atol=1e-6)


def test_gradient_shaping_stays_out_of_the_transparency_map_and_the_record_says_what_acted(tiny_spec, refs_a):
    """One step from the same start: the map is |d loss / d x| whatever Adam is then given."""
    from dataclasses import replace

    from vital_fv.targets import UnitTarget

    base = replace(opt_mod.OPTIM_PRESETS["quick"], grad_blur=0.0, unit_smooth=0.0)
    shaping = replace(base, grad_blur=1.0, unit_prior=1.0, unit_smooth=2.0, channel_smooth=3.0)
    # What acts: none of the unit priors on a class; channel_smooth on a channel's mean; unit_smooth on a neuron.
    acted = {1: (0.0, 0.0, 0.0), UnitTarget("act2", 3): (1.0, 0.0, 3.0), UnitTarget("act2", 3, (2, 2)): (1.0, 2.0, 0.0)}
    for target, (prior, smooth, channel) in acted.items():
        plain = visualize(tiny_spec, target, refs_a, preset=base, steps=1, progress=False)
        shaped = visualize(tiny_spec, target, refs_a, preset=shaping, steps=1, progress=False)
        assert torch.allclose(plain.alpha, shaped.alpha) and plain.alpha.sum() > 0
        opt = shaped.record["optimizer"]
        assert (opt["unit_prior"], opt["unit_smooth"], opt["channel_smooth"]) == (prior, smooth, channel)


@pytest.mark.parametrize(("relevance", "threads"), [(None, 1), (None, 2), ("lrp", 1), ("lrp", 2)])
def test_sorting_during_the_forward_changes_no_pixel(tiny_spec, refs_a, monkeypatch, relevance, threads):
    """The loss's sorts run beside the forward pass (matching.ranks_ahead), with relevance beside the relevance
    backward; at one torch thread the loss parts are made there too. The images are those of sorting in the loss,
    and the sorts made ahead are the ones used."""
    from vital_fv import matching

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    monkeypatch.setattr(opt_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    try:
        _sorting_during_the_forward_changes_no_pixel(tiny_spec, refs_a, monkeypatch, relevance, matching)
    finally:
        torch.set_num_threads(before)


def _sorting_during_the_forward_changes_no_pixel(tiny_spec, refs_a, monkeypatch, relevance, matching):  # noqa: ANN001

    used = []
    taken = matching.RanksAhead._taken  # under take (the order) and take_matched (the loss parts)

    def counting(self, name, z):
        got = taken(self, name, z)
        used.append(got is not None)
        return got

    monkeypatch.setattr(matching.RanksAhead, "_taken", counting)
    kw = dict(preset="quick", steps=6, progress=False, relevance=relevance)
    ahead = visualize(tiny_spec, 1, refs_a, seed=2, **kw)
    assert used and all(used)
    real = opt_mod.ranks_ahead
    monkeypatch.setattr(opt_mod, "ranks_ahead", lambda *a, **k: real(*a, **{**k, "enabled": False}))
    used.clear()
    inline = visualize(tiny_spec, 1, refs_a, seed=2, **kw)
    assert not any(used)
    assert torch.equal(ahead.image, inline.image)


def test_a_class_logit_term_raises_the_class_and_acts_by_default_only_where_the_class_is_small(
        tiny_spec, refs_a, caplog, monkeypatch, tmp_path):
    """``class_logit`` ascends the class's logit beside the matching; the presets leave it to the references:
    on for evidence crops nearly all around the object (the class a small part of the photo), off where the model
    also kept whole-frame crops (the class fills the photo) and for whole images, off (not an error) with
    relevance."""
    import logging
    from dataclasses import replace

    quick = opt_mod.OPTIM_PRESETS["quick"]
    crops = replace(refs_a, info={"crops": {"chosen_by": "evidence", "kept": 4, "object_kept": 4}})
    filled = replace(refs_a, info={"crops": {"chosen_by": "evidence", "kept": 4, "object_kept": 2}})
    assert visualize(tiny_spec, 1, filled, steps=2, progress=False).record["optimizer"]["class_logit"] == 0.0
    kw = dict(preset=quick, steps=30, progress=False, seed=1)
    plain = visualize(tiny_spec, 1, refs_a, **kw)
    with caplog.at_level(logging.INFO, logger="vital_fv"):
        auto = visualize(tiny_spec, 1, crops, **kw)
    assert f"class logit x{opt_mod.CROPS_CLASS_LOGIT}" in caplog.text
    off = visualize(tiny_spec, 1, crops, options={"class_logit": 0}, **kw)
    pushed = visualize(tiny_spec, 1, refs_a, options={"class_logit": 1.0}, **kw)

    def logit(r):  # noqa: ANN001, ANN202
        with torch.no_grad():
            return float(tiny_spec.module(tiny_spec.preprocess.normalize(r.image[None]))[0, 1])

    assert plain.record["optimizer"]["class_logit"] == 0.0 and off.record["optimizer"]["class_logit"] == 0.0
    assert auto.record["optimizer"]["class_logit"] == opt_mod.CROPS_CLASS_LOGIT
    assert pushed.record["optimizer"]["class_logit"] == 1.0
    assert logit(pushed) > logit(plain) and logit(auto) > logit(off)
    assert torch.equal(plain.image, off.image)  # the same references' pixels: only the term differs
    weighted = visualize(tiny_spec, 1, crops, relevance="lrp", steps=2, progress=False)
    assert weighted.record["optimizer"]["class_logit"] == 0.0
    with pytest.raises(VitalError, match="class_logit"):
        visualize(tiny_spec, 1, refs_a, options={"class_logit": 1.0}, relevance="lrp", **kw)
    import vital_fv.references as refs_mod

    def no_work(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("references were prepared before the option was checked")

    monkeypatch.setattr(refs_mod, "resolve", no_work)  # a bad value is refused before any reference work
    for bad in (-1.0, float("nan")):
        with pytest.raises(VitalError, match="option 'class_logit' of vital must be a finite number >= 0"):
            visualize(tiny_spec, "one", tmp_path, options={"class_logit": bad}, **kw)
    with pytest.raises(VitalError, match="class_logit"):
        replace(quick, class_logit=-1.0)


class _TwoBranches(nn.Module):
    """Two branches from the image into one head: no layer's gradient reaches the other's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.act_a = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv_b, self.act_b = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act_a(self.conv_a(x)) + self.act_b(self.conv_b(x))).flatten(1))


@pytest.fixture
def one_thread(monkeypatch):
    """torch on one intra-op thread with a second core free: where the loss backward runs beside the relevance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(opt_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("threads", "cores", "device", "expected"),
                         [(1, 2, "cpu", True), (2, 2, "cpu", False), (1, 1, "cpu", False), (1, 2, "meta", False)])
def test_the_loss_backward_runs_beside_the_relevance_only_on_one_cpu_thread_with_a_core_free(
        monkeypatch, threads, cores, device, expected):
    before = torch.get_num_threads()
    monkeypatch.setattr(opt_mod.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    torch.set_num_threads(threads)
    try:
        assert opt_mod._pipelines(torch.device(device)) is expected
        monkeypatch.setattr(opt_mod, "PIPELINED_LOSS_BACKWARD", False)
        assert opt_mod._pipelines(torch.device(device)) is False
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("model", ["chain", "branches"])
def test_losses_made_during_the_backward_or_beside_the_relevance_change_no_pixel(tiny_spec, refs_a, monkeypatch,
                                                                                 one_thread, model):
    """With relevance on one CPU thread, the loss backward runs in a second thread beside the relevance pass, each
    layer's loss joining it as that layer's relevance arrives (where it does not arrive, on its own after); without
    that, the last relevance layer's loss is made during the backward. Both give the images and loss curves of making
    every loss first."""
    import threading

    from vital_fv import load_model, matching

    if model == "branches":
        torch.manual_seed(0)
        spec = load_model(_TwoBranches(), layers=["act_a", "act_b"], preprocess=tiny_spec.preprocess,
                          class_names=tiny_spec.class_names, name="branches")
    else:
        spec = tiny_spec
    where = []
    loss = matching.sort_matching_loss

    def spying(*a, **k):
        where.append((threading.current_thread().name.startswith("vital-loss"),
                      torch._C._current_graph_task_id() != -1))
        return loss(*a, **k)

    monkeypatch.setattr(opt_mod, "sort_matching_loss", spying)
    kw = dict(preset="quick", steps=5, progress=False, relevance="lrp", seed=3)
    beside = visualize(spec, 1, refs_a, **kw)
    assert any(thread for thread, _ in where)  # in the loss thread
    monkeypatch.setattr(opt_mod, "PIPELINED_LOSS_BACKWARD", False)
    where.clear()
    late = visualize(spec, 1, refs_a, **kw)
    assert not any(thread for thread, _ in where)
    assert any(backward for _, backward in where) == (model == "chain")  # the hook's path in a chain only
    monkeypatch.setattr(opt_mod, "LATE_LOSS_IN_BACKWARD", False)
    where.clear()
    first = visualize(spec, 1, refs_a, **kw)
    assert not any(thread or backward for thread, backward in where)
    for other in (late, first):
        assert torch.equal(beside.image, other.image)
        assert beside.record["loss"] == other.record["loss"]


def test_an_error_in_the_loss_thread_stops_the_run_and_leaves_no_thread_waiting(tiny_spec, refs_a, monkeypatch,
                                                                                one_thread):
    import threading

    from vital_fv import matching

    loss = matching.sort_matching_loss

    def failing(*a, **k):
        if threading.current_thread().name.startswith("vital-loss"):
            raise RuntimeError("loss thread failed")
        return loss(*a, **k)

    monkeypatch.setattr(opt_mod, "sort_matching_loss", failing)
    with pytest.raises(RuntimeError, match="loss thread failed"):
        visualize(tiny_spec, 1, refs_a, preset="quick", steps=3, progress=False, relevance="lrp")
    assert not [t for t in threading.enumerate() if t.name.startswith("vital-")]


def test_ctrl_c_during_a_pipelined_step_keeps_the_image_and_leaves_no_thread_waiting(tiny_spec, refs_a, monkeypatch,
                                                                                      one_thread):
    """Ctrl-C as a layer's relevance arrives (the loss thread is then waiting for the next one): the run stops as
    interrupted with the last image, and the loss thread is let go."""
    import threading

    calls = []
    normalize = opt_mod.normalize_relevance

    def interrupting(r):
        if threading.current_thread() is threading.main_thread():
            calls.append(1)
            if len(calls) == 7:  # the third step's relevance pass, after the first layer's (the loss thread's)
                raise KeyboardInterrupt
        return normalize(r)

    monkeypatch.setattr(opt_mod, "normalize_relevance", interrupting)
    r = visualize(tiny_spec, 1, refs_a, preset="quick", steps=20, progress=False, relevance="lrp", seed=1)
    assert r.status == "interrupted"
    assert r.record["steps_done"] == 2
    assert torch.isfinite(r.image).all()
    assert not [t for t in threading.enumerate() if t.name.startswith("vital-")]
