"""The batch size chosen by measurement (issue 30): the choice logic with a fake timer, the cache, forcing, and one
tiny real call. No timing is asserted: only which size the logic picks from the figures it was given."""

from __future__ import annotations

import pytest

from vital_fv.errors import VitalError
from vital_fv.methods.batching import (
    BatchCache,
    BatchChoice,
    check_batch,
    choose_batch_size,
    choose_for_jobs,
    chunks,
    step_timer,
)


class FakeTimer:
    """Seconds per step by batch size, and the sizes it was asked for."""

    def __init__(self, per_step: dict[int, float]) -> None:
        self.per_step = per_step
        self.calls: list[int] = []

    def __call__(self, size: int) -> float:
        self.calls.append(size)
        return self.per_step[size]


def test_picks_the_fastest_per_image_not_per_step() -> None:
    # per image: 1 -> 1.0, 2 -> 0.75, 4 -> 0.5, 8 -> 0.55: batch 4 wins though batch 1 has the cheapest step.
    timer = FakeTimer({1: 1.0, 2: 1.5, 4: 2.0, 8: 4.4})
    choice = choose_batch_size(timer, 8, candidates=(1, 2, 4, 8))
    assert choice.size == 4 and choice.how == "measured"
    assert choice.per_image == pytest.approx({1: 1.0, 2: 0.75, 4: 0.5, 8: 0.55})
    assert "batch 4" in choice.reason() and "fastest per image" in choice.reason()


def test_stops_trying_larger_sizes_once_batching_costs() -> None:
    timer = FakeTimer({1: 1.0, 2: 3.0, 4: 1.0, 8: 1.0})  # 2 is 1.5x slower per image: 4 and 8 are not tried
    choice = choose_batch_size(timer, 8, candidates=(1, 2, 4, 8))
    assert choice.size == 1 and timer.calls == [1, 2]


def test_no_candidate_above_the_item_count_and_one_item_measures_nothing() -> None:
    timer = FakeTimer({1: 1.0, 2: 1.0, 4: 1.0})
    assert choose_batch_size(timer, 3, candidates=(1, 2, 4, 8)).size == 2
    assert timer.calls == [1, 2]
    single = choose_batch_size(FakeTimer({}), 1)
    assert (single.size, single.how) == (1, "single")


def test_out_of_memory_sizes_are_skipped_and_other_errors_raised() -> None:
    def timer(size: int) -> float:
        if size == 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate ...")
        return {1: 1.0, 2: 1.0}[size]

    assert choose_batch_size(timer, 4, candidates=(1, 2, 4)).size == 2

    def broken(size: int) -> float:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        choose_batch_size(broken, 4, candidates=(1, 2, 4))


def test_forced_size_measures_nothing() -> None:
    timer = FakeTimer({})
    choice = choose_batch_size(timer, 100, forced=3)
    assert (choice.size, choice.how, timer.calls) == (3, "forced", [])
    assert "forced" in choice.reason()


def test_the_cache_answers_the_second_run_per_key(tmp_path) -> None:
    cache = BatchCache(tmp_path)
    key = {"model": "m", "method": "vital", "device": "cpu:x"}
    first = FakeTimer({1: 1.0, 2: 1.2, 4: 2.0})
    assert choose_batch_size(first, 4, key_parts=key, cache=cache, candidates=(1, 2, 4)).size == 4
    second = FakeTimer({1: 9.0, 2: 30.0, 4: 90.0})  # would choose 1 if it were asked
    again = choose_batch_size(second, 4, key_parts=key, cache=cache, candidates=(1, 2, 4))
    assert (again.size, again.how, second.calls) == (4, "cached", [])
    other = choose_batch_size(second, 4, key_parts={**key, "method": "maco"}, cache=cache, candidates=(1, 2, 4))
    assert other.size == 1 and second.calls == [1, 2]  # another method: its own measurement
    # a size the cache does not hold yet is measured and added; the sizes it holds are not measured again
    third = FakeTimer({8: 1.0})
    assert choose_batch_size(third, 8, key_parts=key, cache=cache, candidates=(1, 2, 4, 8)).size == 8
    assert third.calls == [8]
    assert set(cache.load(key)) == {1, 2, 4, 8}


def test_a_damaged_cache_file_only_costs_a_measurement(tmp_path) -> None:
    cache = BatchCache(tmp_path)
    key = {"model": "m"}
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_text("{not json")
    timer = FakeTimer({1: 1.0, 2: 1.0})
    assert choose_batch_size(timer, 2, key_parts=key, cache=cache, candidates=(1, 2)).size == 2
    assert timer.calls == [1, 2] and cache.load(key) == {1: 1.0, 2: 0.5}


@pytest.mark.parametrize("value, expected", [("auto", None), (None, None), (4, 4), ("8", 8)])
def test_check_batch_accepts(value, expected) -> None:
    assert check_batch(value) == expected


@pytest.mark.parametrize("value", [0, -2, "many", 2.5, True])
def test_check_batch_refuses_naming_the_option(value) -> None:
    with pytest.raises(VitalError, match="--batch"):
        check_batch(value)


def test_choice_describes_itself_for_the_record() -> None:
    d = BatchChoice(2, "measured", {1: 0.5, 2: 0.25}).describe()
    assert d == {"size": 2, "how": "measured", "seconds_per_image_step": {"1": 0.5, "2": 0.25}}
    assert [list(c) for c in chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]


def test_a_tiny_real_call_times_steps_and_caches(tiny_spec, tmp_path) -> None:
    from vital_fv.methods import Job
    from vital_fv.targets import ClassTarget

    spec = tiny_spec
    jobs = [Job(ClassTarget(i % 4), None, i) for i in range(4)]
    timer = step_timer("fourier", spec, jobs, steps=3, preset="quick", device="cpu")
    assert timer(2) > 0
    choice = choose_for_jobs("fourier", spec, jobs * 40, device="cpu", preset="quick", cache_dir=tmp_path,
                             candidates=(1, 2, 4))
    assert choice.how == "measured" and choice.size in (1, 2, 4) and 1 in choice.per_image
    again = choose_for_jobs("fourier", spec, jobs * 40, device="cpu", preset="quick", cache_dir=tmp_path,
                            candidates=(1, 2, 4))
    assert again.how == "cached" and again.size == choice.size
    # a run shorter than the probes, and DeepInversion's coupled batch, are one batch without measuring
    assert choose_for_jobs("fourier", spec, jobs, device="cpu", preset="quick", steps=2,
                           cache_dir=tmp_path / "x").how == "short"
    assert choose_for_jobs("deepinversion", spec, jobs * 40, device="cpu", preset="quick",
                           cache_dir=tmp_path / "y") == BatchChoice(160, "single")
    assert choose_for_jobs("fourier", spec, jobs, device="cpu", forced=3).how == "forced"
