"""Small circuits: the channel ranking is the LRP relevance for the class logit summed over images, which for a
pooled linear head has a closed form to check it against."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vital_fv import circuits as K
from vital_fv.errors import VitalError

# The tiny model's logits are often negative on these photos; the test below checks that this is said once.
pytestmark = pytest.mark.filterwarnings("ignore:the class logit is not positive:UserWarning")


def photos(folder, n=5, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def closed_form(spec, cls, folder):
    """z+ at the linear head (no bias), the z-rule through the average pool: per image, channel c gets
    pooled_c w+_c / sum(pooled w+) of the logit; summed over images."""
    from vital_fv.references import from_folder

    refs = from_folder(folder, n=100)
    x = spec.preprocess.normalize(refs.prepare(spec.preprocess))
    m = spec.module
    with torch.no_grad():
        feats = m.act2(m.conv2(m.act1(m.conv1(x))))
        pooled = feats.mean((2, 3)).double()
        logits = m(x)[:, cls].double()
        wp = m.fc.weight[cls].double().clamp(min=0)
        z = pooled * wp
    return (z / z.sum(1, keepdim=True) * logits[:, None]).sum(0).numpy()


def test_ranking_equals_the_brute_force_relevance_sum(tiny_spec, tmp_path):
    with torch.no_grad():  # a head row with both signs, so z+ has something to leave out
        tiny_spec.module.fc.weight[2] = torch.linspace(-1, 1, 16)
    folder = photos(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="class logit is not positive") as said:
        rk = K.rank_channels(tiny_spec, 2, folder, layer="act2", batch_size=2, progress=False)
    assert len(said) == 1 and rk.logit_sum < 0
    expected = closed_form(tiny_spec, 2, folder)
    np.testing.assert_allclose(rk.totals, expected, rtol=1e-4, atol=1e-6)
    assert rk.order() == [int(c) for c in np.argsort(-expected, kind="stable")]
    assert rk.totals.sum() == pytest.approx(rk.logit_sum, rel=1e-4)  # conserved: the shares split the logits
    assert rk.params["image_count"] == 5


def test_the_last_hidden_layer_is_found_and_a_ranking_resumes_from_its_cache(tiny_spec, tmp_path):
    folder = photos(tmp_path / "imgs")
    first = K.rank_channels(tiny_spec, 1, folder, progress=False)
    assert first.layer == "act2" and first.params["cache"] == "miss"
    again = K.rank_channels(tiny_spec, 1, folder, progress=False)
    assert again.params["cache"] == "hit"
    np.testing.assert_allclose(first.totals, again.totals)
    photos(tmp_path / "imgs", n=7, seed=1)  # two more pictures (and five replaced): only the new ones are computed
    more = K.rank_channels(tiny_spec, 1, folder, progress=False)
    assert more.params["image_count"] == 7 and more.params["cache"] in ("miss", "resumed")


def test_interrupted_ranking_keeps_what_it_scanned(tiny_spec, tmp_path, monkeypatch):
    from vital_fv import relevance
    from vital_fv.references import ScanInterrupted

    folder = photos(tmp_path / "imgs", n=4)
    calls = {"n": 0}
    real = relevance.Relevance.__call__

    def flaky(self, x, targets, keep_graph=False):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, x, targets, keep_graph)

    monkeypatch.setattr(relevance.Relevance, "__call__", flaky)
    with pytest.raises(ScanInterrupted, match="after 2 of 4"):
        K.rank_channels(tiny_spec, 0, folder, batch_size=2, progress=False)
    monkeypatch.setattr(relevance.Relevance, "__call__", real)
    done = K.rank_channels(tiny_spec, 0, folder, batch_size=2, progress=False)
    assert done.params["cache"] == "resumed" and done.params["image_count"] == 4
    np.testing.assert_allclose(done.totals, closed_form(tiny_spec, 0, folder), rtol=1e-4, atol=1e-6)


def test_circuit_visualizes_the_top_channels_and_draws_the_figure(tiny_spec, tmp_path):
    folder = photos(tmp_path / "imgs", n=6)
    rk = K.rank_channels(tiny_spec, 3, folder, progress=False)
    circuit = K.build_circuit(tiny_spec, rk, folder, top=2, n_refs=3, steps=10, preset="quick", progress=False)
    assert circuit.channels == rk.order()[:2]
    assert [r.record["target"]["channel"] for r in circuit.results] == circuit.channels
    assert [r.record["circuit"]["rank"] for r in circuit.results] == [1, 2]
    rec = json.loads(K.save_circuit(circuit, tmp_path / "out").read_text())
    assert [u["channel"] for u in rec["units"]] == circuit.channels
    assert rec["ranking_top20"][0]["channel"] == circuit.channels[0]
    for c in circuit.channels:
        assert (tmp_path / "out" / f"unit-{c}.png").is_file()
    from PIL import Image as PILImage

    with PILImage.open(tmp_path / "out" / "circuit.png") as fig:
        assert fig.width > 300 and fig.height > 200


def test_bad_class_and_empty_folder_get_clear_errors(tiny_spec, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitalError, match="out of range"):
        K.rank_channels(tiny_spec, 9, photos(tmp_path / "imgs"), progress=False)
    with pytest.raises(VitalError, match="no image files"):
        K.rank_channels(tiny_spec, 0, tmp_path / "empty", progress=False)


def test_ablation_of_the_top_channels_matches_their_contributions(tiny_spec, tmp_path):
    """On a pooled linear head, zeroing channels lowers the logit by exactly their pooled contributions."""
    from vital_fv.references import from_folder

    with torch.no_grad():  # a class the images drive (positive logits), with some negative weights
        tiny_spec.module.fc.weight[2] = torch.linspace(-0.3, 1, 16)
        tiny_spec.module.fc.bias[2] = 0
    folder = photos(tmp_path / "imgs")
    rk = K.rank_channels(tiny_spec, 2, folder, progress=False)
    assert rk.logit_sum > 0
    top = rk.order()[:3]
    abl = K.ablation(tiny_spec, rk, top, n_random=5)
    refs = from_folder(folder, n=100)
    m = tiny_spec.module
    with torch.no_grad():
        x = tiny_spec.preprocess.normalize(refs.prepare(tiny_spec.preprocess))
        pooled = m.act2(m.conv2(m.act1(m.conv1(x)))).mean((2, 3))
        expected = float((pooled[:, top] * m.fc.weight[2, top]).sum(1).mean())
    assert abl["drop_top"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert abl["images"] == 5 and len(abl["channels"]) == 3 and abl["random_draws"] == 5
    assert abl["drop_top"] >= abl["drop_random_mean"]  # the most relevant channels carry more than random ones


def test_run_circuit_is_the_whole_command_and_goes_through_the_registry(tiny_spec, tmp_path, monkeypatch):
    from vital_fv import methods

    called = []
    real = methods.run_method
    monkeypatch.setattr(methods, "run_method", lambda m, *a, **k: called.append(m) or real(m, *a, **k))
    out = tmp_path / "out"
    with pytest.raises(VitalError, match="--top"):
        K.run_circuit(tiny_spec, "one", tmp_path, out, top=0)
    circuit, record = K.run_circuit(tiny_spec, "one", photos(tmp_path / "p"), out, top=2, n_refs=3, steps=3,
                                    preset="quick", progress=False)
    assert called == ["vital"] and record == out / K.RECORD
    assert circuit.ranking.class_index == 1 and len(circuit.results) == 2
    rec = json.loads(record.read_text())
    assert [u["channel"] for u in rec["units"]] == circuit.channels == circuit.ranking.order()[:2]
    assert (out / "circuit.png").is_file()
