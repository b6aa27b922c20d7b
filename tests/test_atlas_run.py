"""Running an atlas job: batches of different targets, resuming after Ctrl-C and kill -9, status."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vital_fv import ClassTarget, Job, references, run_method
from vital_fv.atlas import InProcess, Ledger, atlas_status, plan_atlas, run_atlas
from vital_fv.cli import main
from vital_fv.errors import VitalError


def test_a_target_in_a_batch_gives_the_image_it_gives_alone(tiny_spec):
    """Bit for bit in float64: each batch item has its own seeded start, jitter, prototypes and loss. (In float32
    the CPU's kernels sum in a batch-size-dependent order, and Adam, which divides each pixel's gradient by its
    running size, grows those last-bit differences: 4e-5 after one step, ~0.2 after 20 on this model.)"""
    tiny_spec.module.double()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        red = references.from_tensor(torch.rand(2, 3, 36, 36, generator=torch.Generator().manual_seed(1)))
        blue = references.from_tensor(torch.rand(3, 3, 36, 36, generator=torch.Generator().manual_seed(2)))
        jobs = [Job(ClassTarget(1), red, 0), Job(ClassTarget(2), blue, 5), Job(ClassTarget(3), red, 7)]
        together = run_method("vital", tiny_spec, jobs, preset="quick", steps=12, progress=False)
        for job, batched in zip(jobs, together, strict=True):
            (alone,) = run_method("vital", tiny_spec, [job], preset="quick", steps=12, progress=False)
            assert torch.equal(alone.image, batched.image), job
            assert alone.record["loss"] == batched.record["loss"]
        assert not torch.equal(together[0].image, together[2].image)  # same references, other seed and class
    finally:
        torch.set_default_dtype(default)


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    """Two bundled classes x vital, fourier on Lite0, 2 steps: planned once, copied per test."""
    folder = tmp_path_factory.mktemp("atlas") / "job"
    plan_atlas("efficientnet_lite0", folder, classes="espresso,tripod", methods=["vital", "fourier"], steps=2,
               n_refs=4).close()
    return folder


def _copy(job, tmp_path):
    import shutil

    return shutil.copytree(job, tmp_path / "job")


class StopsAfter(InProcess):
    """The in-process executor, with a Ctrl-C arriving during the n-th batch."""

    def __init__(self, n, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.left = n

    def wait(self):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt
        return super().wait()


class Recording(InProcess):
    """The in-process executor, noting each batch's method and size."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def submit(self, batch):
        self.batches.append((batch[0].method, len(batch)))
        return super().submit(batch)


def test_auto_batch_is_chosen_per_method_used_and_kept_in_the_ledger(small_job, tmp_path, monkeypatch, capsys):
    from vital_fv.methods import batching

    job = _copy(small_job, tmp_path)
    calls = []

    def fake(method, spec, jobs, *, items, **kwargs):  # a measurement that says vital 2, fourier 1
        calls.append((method, items, len(jobs)))
        return batching.BatchChoice({"vital": 2, "fourier": 1}[method], "measured", {1: 0.5, 2: 0.4})

    monkeypatch.setattr(batching, "choose_for_jobs", fake)
    ex = Recording(Ledger.open(job).plan, job, "cpu")
    assert run_atlas(job, device="cpu", progress=False, executor=ex)["done"] == 4
    assert sorted(calls) == [("fourier", 2, 1), ("vital", 2, 1)]  # once per method, probed with one item's job
    assert sorted(ex.batches) == [("fourier", 1), ("fourier", 1), ("vital", 2)]
    assert all(r["attempts"] == 1 for r in Ledger.open(job).rows())  # the claimed extras went back unpenalized
    batch = atlas_status(job)["batch"]
    assert batch["vital"]["size"] == 2 and batch["fourier"]["how"] == "measured"
    assert main(["atlas", "status", str(job)]) == 0
    assert "vital: batch 2 (measured)" in capsys.readouterr().out


def test_auto_batch_without_a_fake_and_a_forced_batch(small_job, tmp_path):
    (tmp_path / "a").mkdir()
    job = _copy(small_job, tmp_path / "a")
    assert run_atlas(job, batch="auto", device="cpu", progress=False)["done"] == 4
    # two steps a run: shorter than measuring would be, so each method's items run as one batch
    assert {m: b["how"] for m, b in atlas_status(job)["batch"].items()} == {"vital": "short", "fourier": "short"}
    (tmp_path / "b").mkdir()
    forced = _copy(small_job, tmp_path / "b")
    ex = Recording(Ledger.open(forced).plan, forced, "cpu")
    run_atlas(forced, batch=1, device="cpu", progress=False, executor=ex)
    assert ex.batches == [(m, 1) for m, _ in ex.batches] and len(ex.batches) == 4
    with pytest.raises(VitalError, match="--batch"):
        run_atlas(forced, batch="many", device="cpu", progress=False)


def test_plan_run_status_and_resume_after_ctrl_c(small_job, tmp_path, capsys):
    job = _copy(small_job, tmp_path)
    ledger = Ledger.open(job)
    plan = ledger.plan
    assert ledger.counts()["pending"] == 4 and plan["weights_sha256"] and plan["methods"] == ["vital", "fourier"]
    ex = StopsAfter(2, plan, job, "cpu")
    with pytest.raises(KeyboardInterrupt):
        run_atlas(job, batch=2, device="cpu", progress=False, executor=ex)
    assert ledger.counts() == {"pending": 2, "running": 0, "done": 2, "failed": 0}  # the stopped batch is queued
    done_before = {r["stem"]: r["finished"] for r in ledger.rows() if r["status"] == "done"}
    assert main(["atlas", "run", str(job), "--batch", "2", "--device", "cpu", "--quiet"]) == 0
    rows = ledger.rows()
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    assert {r["stem"]: r["finished"] for r in rows if r["stem"] in done_before} == done_before  # nothing redone
    files = sorted(p.name for p in (job / "images").iterdir())
    assert len([f for f in files if f.endswith(".json")]) == 4  # one copy per item
    for r in rows:
        assert all((job / o).is_file() for o in json.loads(r["outputs"]))
        record = json.loads((job / "images" / f"{r['stem']}.json").read_text())
        assert record["atlas"]["item"] == r["id"] and record["steps_done"] == 2
    status = atlas_status(job)
    assert status["counts"]["done"] == 4 and status["images_per_hour"] > 0 and status["eta_seconds"] == 0
    assert main(["atlas", "status", str(job)]) == 0
    out = capsys.readouterr().out
    assert "4 items: 4 done, 0 running, 0 failed, 0 left" in out and "images per hour" in out


def test_bad_plans_are_refused_before_the_job_exists(tmp_path, capsys):
    out = str(tmp_path / "j")
    for argv, message in [
        (["--classes", "0-99999"], "class range 0-99999 is outside the model's 1000 classes"),
        (["--classes", "goldfish"], "no references for 1 of the classes (1 goldfish)"),
        (["--units", "blocks.5.2:all"], "give --images DIR to mine them from"),
        (["--units", "nope:all", "--images", str(tmp_path)], "unknown layer 'nope'"),
        (["--classes", "espresso", "--methods", "vital,lucid"], "unknown method 'lucid'"),
        (["--classes", "espresso", "--seeds", "1,1"], "--seeds repeats a seed"),
        ([], "an atlas needs targets"),
    ]:
        assert main(["atlas", "plan", *argv, "--out", out]) == 2, argv
        assert message in capsys.readouterr().err, argv
        assert not (tmp_path / "j" / "atlas.sqlite").exists()
    assert main(["atlas", "run", str(tmp_path), "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
    assert main(["atlas", "run", str(tmp_path)]) == 2
    assert "is not an atlas job" in capsys.readouterr().err


@pytest.mark.slow
def test_a_driver_killed_with_sigkill_resumes_without_redoing_or_duplicating(small_job, tmp_path):
    job = _copy(small_job, tmp_path)
    con = sqlite3.connect(job / "atlas.sqlite")
    con.execute("UPDATE meta SET value = json_set(value, '$.steps', 40) WHERE key = 'plan'")  # slow enough to kill
    con.commit()
    cmd = [sys.executable, "-m", "vital_fv.cli", "atlas", "run", str(job), "--batch", "1", "--device", "cpu",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if con.execute("SELECT COUNT(*) FROM items WHERE status = 'done'").fetchone()[0] >= 1:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    counts = dict(con.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
    assert counts.get("done", 0) >= 1 and counts.get("done", 0) < 4
    done_before = dict(con.execute("SELECT stem, finished FROM items WHERE status = 'done'").fetchall())
    assert subprocess.run(cmd, capture_output=True).returncode == 0  # the lock died with the killed driver
    rows = con.execute("SELECT stem, status, finished, attempts FROM items").fetchall()
    assert all(s == "done" for _, s, _, _ in rows)
    assert {stem: f for stem, _, f, _ in rows if stem in done_before} == done_before
    assert all(a == 1 for *_, a in rows)  # the killed attempt was not counted against the item
    jsons = sorted(p.name for p in (job / "images").glob("*.json"))
    assert len(jsons) == 4 and not list((job / "images").glob("*.tmp*"))


@pytest.mark.slow
def test_local_workers_retry_the_batch_of_a_worker_killed_mid_batch(small_job, tmp_path):
    from vital_fv.atlas import LocalWorkers

    class KillsOne(LocalWorkers):
        killed = None
        started: list = []

        def _start(self, device):
            name = super()._start(device)
            self.started.append(self._workers[name][0])
            return name

        def wait(self):
            if self.killed is None:  # the first batch out: kill its worker (SIGKILL) before it can finish
                self.killed = next(iter(self._busy))
                os.kill(self._workers[self.killed][0].pid, signal.SIGKILL)
            return super().wait()

    job = _copy(small_job, tmp_path)
    plan = Ledger.open(job).plan
    ex = KillsOne(plan, job, 2, ["cpu"])
    counts = run_atlas(job, batch=1, device="cpu", progress=False, executor=ex)
    assert counts == {"pending": 0, "running": 0, "done": 4, "failed": 0}
    rows = Ledger.open(job).rows()
    assert sorted(r["attempts"] for r in rows) == [1, 1, 1, 2]  # the killed batch's item ran again, once
    assert {r["worker"] for r in rows} <= {"worker-0", "worker-1", "worker-2"}
    assert len(list((job / "images").glob("*.json"))) == 4
    assert len(ex.started) == 3 and not any(p.is_alive() for p in ex.started)  # replaced, then all stopped


@pytest.mark.slow
def test_ray_with_two_local_workers_gives_the_in_process_ledger(small_job, tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alone, on_ray = _copy(small_job, tmp_path / "a"), _copy(small_job, tmp_path / "b")
    assert run_atlas(alone, batch=2, device="cpu", progress=False)["done"] == 4
    assert main(["atlas", "run", str(on_ray), "--ray", "auto", "--workers", "2", "--batch", "2", "--quiet"]) == 0

    def ledger(job):
        return sorted((r["stem"], r["status"], r["attempts"], r["outputs"]) for r in Ledger.open(job).rows())

    assert ledger(on_ray) == ledger(alone)
    assert {r["worker"] for r in Ledger.open(on_ray).rows()} <= {"ray-0", "ray-1"}
    for r in Ledger.open(on_ray).rows():
        a = json.loads((alone / "images" / f"{r['stem']}.json").read_text())
        b = json.loads((on_ray / "images" / f"{r['stem']}.json").read_text())
        assert a["target"] == b["target"] and a["seed"] == b["seed"] and a["steps_done"] == b["steps_done"]


@pytest.mark.slow
def test_units_are_mined_in_shards_then_visualized(tmp_path, capsys):
    photos = tmp_path / "photos"
    assert main(["photos", "--only", "coffee,chelsea,astronaut", "--out", str(photos)]) == 0
    job = tmp_path / "job"
    assert main(["atlas", "plan", "--units", "blocks.5.2:0-1", "--images", str(photos), "--shard-size", "2",
                 "--steps", "2", "--n-refs", "2", "--out", str(job)]) == 0
    ledger = Ledger.open(job)
    assert [r["method"] for r in ledger.rows()] == ["mine", "mine", "vital", "vital"]
    assert main(["atlas", "run", str(job), "--batch", "2", "--device", "cpu", "--quiet"]) == 0
    assert ledger.counts()["done"] == 4
    record = json.loads((job / "images" / "efficientnet_lite0-blocks-5-2-1-s0.json").read_text())
    mining = record["references"]["mining"]
    assert mining["shards"] == 2 and mining["images"] == 3 and len(mining["scores"]) == 2
    assert main(["atlas", "status", str(job)]) == 0
    assert "mining: 2/2 shards done" in capsys.readouterr().out


def _children(pid):
    kids = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = Path(f"/proc/{stat}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(stat))
    return kids


@pytest.mark.slow
def test_ctrl_c_on_the_driver_stops_its_workers_and_queues_their_batches(small_job, tmp_path):
    job = _copy(small_job, tmp_path)
    con = sqlite3.connect(job / "atlas.sqlite")
    con.execute("UPDATE meta SET value = json_set(value, '$.steps', 400) WHERE key = 'plan'")
    con.commit()
    cmd = [sys.executable, "-m", "vital_fv.cli", "atlas", "run", str(job), "--workers", "2", "--batch", "1",
           "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    deadline = time.time() + 120
    while time.time() < deadline and con.execute("SELECT COUNT(*) FROM items WHERE worker LIKE 'worker-%' AND "
                                                 "status = 'running'").fetchone()[0] < 2:
        time.sleep(0.2)
    workers = [p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) >= 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "the same command continues" in err
    assert all(not Path(f"/proc/{p}").exists() or "spawn_main" not in Path(f"/proc/{p}/cmdline").read_text()
               for p in workers)
    assert dict(con.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall()) == {"pending": 4}
    assert con.execute("SELECT MAX(attempts) FROM items").fetchone()[0] == 0  # a stop is not the items' fault


def _concepts_file(folder):
    """A concepts file for Lite0 in the format `vital concepts` writes (two directions at bn2, two crops each)."""
    from safetensors.torch import save_file

    from vital_fv.result import png_bytes

    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(2):
        crops = []
        for k in range(2):
            name = f"crops/concept-{i}/{k + 1:02d}.png"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(png_bytes(torch.rand(3, 64, 64, generator=g)))
            crops.append({"file": name, "coefficient": 1.0 - k / 10})
        rows.append({"index": i, "importance": 0.5, "top_crops": crops})
    record = {"model": "efficientnet_lite0", "layer": "bn2", "class_name": "espresso", "class_index": 967,
              "concepts": rows}
    directions = torch.nn.functional.normalize(torch.rand(2, 1280, generator=g), dim=1)
    save_file({"directions": directions}, str(folder / "concepts.safetensors"), metadata={"record": json.dumps(record)})
    return folder / "concepts.safetensors"


def test_concepts_of_a_saved_file_are_atlas_items(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    path = _concepts_file(tmp_path / "c")
    job = tmp_path / "job"
    # (the baselines ascend a concept's direction like any objective; DeepInversion shows classes only)
    assert main(["atlas", "plan", "--concepts", f"{path}:all", "--methods", "vital,deepinversion", "--out",
                 str(job)]) == 2
    assert "--methods deepinversion cannot show concepts" in capsys.readouterr().err
    assert main(["atlas", "plan", "--concepts", f"{path}:all", "--seeds", "0,1", "--steps", "2",
                 "--out", str(job)]) == 0
    rows = Ledger.open(job).rows()
    assert [(r["label"], r["seed"], r["refs"]) for r in rows] == [
        ("bn2:espresso-concept0", 0, "concept"), ("bn2:espresso-concept0", 1, "concept"),
        ("bn2:espresso-concept1", 0, "concept"), ("bn2:espresso-concept1", 1, "concept")]
    assert main(["atlas", "run", str(job), "--batch", "4", "--device", "cpu", "--quiet"]) == 0
    records = [json.loads(p.read_text()) for p in sorted((job / "images").glob("*.json"))]
    assert len(records) == 4 and {r["target"]["kind"] for r in records} == {"direction"}
    vital = [r for r in records if r["method"] == "vital"]
    assert all(r["references"]["count"] == 2 and "concept" in r["references"]["label"] for r in vital)
    assert main(["atlas", "plan", "--concepts", f"{path}:all", "--model", "efficientnet_lite1", "--out",
                 str(tmp_path / "j2")]) == 2
    assert "extracted on efficientnet_lite0, not efficientnet_lite1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fourier_job(tmp_path_factory):
    """Two bundled classes x fourier x two seeds on Lite0, 2 steps (no references: cheap to make again)."""
    folder = tmp_path_factory.mktemp("atlas") / "job"
    plan_atlas("efficientnet_lite0", folder, classes="espresso,tripod", methods=["fourier"], seeds=[0, 1],
               steps=2).close()
    return folder


def test_done_items_whose_files_went_missing_or_changed_are_reported_and_made_again(fourier_job, lite0, tmp_path,
                                                                                      capsys):
    job = _copy(fourier_job, tmp_path)
    plan = Ledger.open(job).plan

    def run(**kwargs):
        return run_atlas(job, batch=4, progress=False, executor=InProcess(plan, job, "cpu", spec=lite0), **kwargs)

    assert run()["done"] == 4
    rows = {r["stem"]: r for r in Ledger.open(job).rows()}
    assert all(set(json.loads(r["digests"])) == set(json.loads(r["outputs"])) for r in rows.values())
    gone, changed, *_ = sorted(rows)
    (job / "images" / f"{gone}.png").unlink()
    png = job / "images" / f"{changed}.png"
    data = bytearray(png.read_bytes())
    data[-20] ^= 0xFF  # the same size, another byte: only a hash sees it
    png.write_bytes(bytes(data))
    status = atlas_status(job)
    assert status["counts"]["done"] == 4
    assert [(d["stem"], d["problems"]) for d in status["damaged"]] == [(gone, [f"images/{gone}.png is missing"])]
    assert sorted(d["stem"] for d in atlas_status(job, verify=True)["damaged"]) == [gone, changed]
    capsys.readouterr()
    assert main(["atlas", "status", str(job)]) == 1
    out = capsys.readouterr().out
    assert f"missing or damaged: {rows[gone]['label']}" in out and "1 done items have missing or damaged" in out
    assert main(["atlas", "status", str(job), "--verify"]) == 1
    assert "differs from the file that was made (sha256)" in capsys.readouterr().out

    # the command, sizes checked: the missing image is made again, nothing else
    assert main(["atlas", "run", str(job), "--batch", "4", "--device", "cpu", "--quiet"]) == 0
    after = {r["stem"]: r for r in Ledger.open(job).rows()}
    assert (job / "images" / f"{gone}.png").is_file() and after[gone]["finished"] > rows[gone]["finished"]
    assert all(after[s]["finished"] == rows[s]["finished"] for s in rows if s != gone)
    assert [d["stem"] for d in atlas_status(job, verify=True)["damaged"]] == [changed]
    assert run(verify=True)["done"] == 4  # every file hashed: the changed one is made again
    assert atlas_status(job, verify=True)["damaged"] == []
    assert main(["atlas", "status", str(job), "--verify"]) == 0
    assert "every done item's files verified (4 items)" in capsys.readouterr().out
    assert main(["atlas", "run", str(job), "--verify", "--device", "cpu", "--quiet"]) == 0  # nothing to do

    # a job of an older vital-fv (no hashes recorded): sizes are unknown, --verify reads the files instead
    con = sqlite3.connect(job / "atlas.sqlite")
    con.execute("UPDATE items SET digests = NULL")
    con.commit()
    png = job / "images" / f"{gone}.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # a truncated image
    assert atlas_status(job)["damaged"] == [] and atlas_status(job)["unhashed"] == 4
    (bad,) = atlas_status(job, verify=True)["damaged"]
    assert bad["stem"] == gone and "unreadable" in bad["problems"][0]
    assert run()["done"] == 4  # sizes unknown: not seen
    assert not {r["stem"]: r for r in Ledger.open(job).rows()}[gone]["digests"]
    assert run(verify=True)["done"] == 4
    after = {r["stem"]: r for r in Ledger.open(job).rows()}
    assert after[gone]["digests"] and sum(r["digests"] is None for r in after.values()) == 3
    assert atlas_status(job, verify=True)["damaged"] == []


def test_a_run_removes_the_half_written_files_a_killed_run_left_and_nothing_else(fourier_job, lite0, tmp_path):
    """SIGKILL mid-write leaves ``atomic_write_bytes``'s temporary file (no handler runs): the next run, holding the
    job's lock, removes it; finished images and the user's own files stay."""
    job = _copy(fourier_job, tmp_path)
    plan = Ledger.open(job).plan
    assert run_atlas(job, batch=4, progress=False, executor=InProcess(plan, job, "cpu", spec=lite0))["done"] == 4
    images = job / "images"
    made = {p.name: p.read_bytes() for p in images.iterdir()}
    stem = sorted(p.stem for p in images.glob("*.png"))[0]
    (images / f".{stem}.png.k1ll3d.tmp").write_bytes(b"\x89PNG half")
    (images / "notes.txt").write_text("mine")
    assert run_atlas(job, batch=4, progress=False, executor=InProcess(plan, job, "cpu", spec=lite0))["done"] == 4
    assert {p.name: p.read_bytes() for p in images.iterdir()} == {**made, "notes.txt": b"mine"}


def test_an_out_that_is_a_file_or_inside_one_is_refused_by_name(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    for out, message in [(file, f"--out {file} is a file, not a folder"),
                         (file / "job", f"--out {file / 'job'} is inside {file}, a file"),
                         (link / "job", f"{link} is a link to nothing")]:
        assert main(["atlas", "plan", "--classes", "espresso", "--out", str(out)]) == 2, out
        assert message in capsys.readouterr().err, out
    assert file.read_text() == "x"
    for argv in (["run", str(file)], ["status", str(file)]):
        assert main(["atlas", *argv]) == 2
        assert "is not an atlas job" in capsys.readouterr().err


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _threads(pid):
    names = []
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        with contextlib.suppress(OSError):
            names.append(comm.read_text().strip())
    return names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_and_the_resource_tracker_die_with_a_driver_killed_with_sigkill(small_job, tmp_path):
    from vital_fv.atlas.executors import WATCHDOG

    job = _copy(small_job, tmp_path)
    con = sqlite3.connect(job / "atlas.sqlite")
    con.execute("UPDATE meta SET value = json_set(value, '$.steps', 400) WHERE key = 'plan'")  # never ends here
    con.commit()
    cmd = [sys.executable, "-m", "vital_fv.cli", "atlas", "run", str(job), "--workers", "2", "--batch", "1",
           "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        workers: list[int] = []
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:  # both workers started, watching their driver
            workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
            if len(workers) == 2 and all(WATCHDOG in _threads(p) for p in workers):
                break
            time.sleep(0.1)
        kids = _children(proc.pid)
        assert len(workers) == 2 and any("resource_tracker" in _cmdline(p) for p in kids), kids
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(p) for p in kids):
            time.sleep(0.1)
        assert not [p for p in kids if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in kids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_class_with_few_photos_is_completed_by_evidence_unless_the_plan_says_no(lite0, tmp_path, capsys):
    from vital_fv.atlas.work import item_references
    from vital_fv.result import png_bytes

    (tmp_path / "refs" / "espresso").mkdir(parents=True)
    photo = references.bundled("espresso").images[0]
    (tmp_path / "refs" / "espresso" / "cup.png").write_bytes(png_bytes(photo.float() / 255))
    assert main(["atlas", "plan", "--classes", "espresso", "--refs", str(tmp_path / "refs"), "--n-refs", "4",
                 "--crops", "objects", "--ref-weighting", "evidence", "--out", str(tmp_path / "a")]) == 0
    ledger = Ledger.open(tmp_path / "a")
    plan, (item,) = ledger.plan, ledger.items()
    ledger.close()
    assert plan["references"] == {"augment": None, "crops": "objects", "weighting": "evidence"}
    refs = item_references(lite0, item, "cpu")
    assert refs.count == 4 and refs.summary() == "1 photo: 4 crops around the class, chosen by the model's evidence"
    assert refs.weighting and refs.position_weights.shape[0] == 4
    assert main(["atlas", "plan", "--classes", "espresso", "--refs", str(tmp_path / "refs"), "--n-refs", "4",
                 "--no-augment", "--out", str(tmp_path / "b")]) == 0
    ledger = Ledger.open(tmp_path / "b")
    plain = item_references(lite0, ledger.items()[0], "cpu")
    ledger.close()
    assert plain.count == 1 and plain.summary() == "1 image" and plain.boxes is None and plain.whole
    with pytest.raises(SystemExit):
        main(["atlas", "plan", "--classes", "espresso", "--crops", "best", "--out", str(tmp_path / "c")])
    assert "argument --crops: invalid choice" in capsys.readouterr().err


def test_a_job_planned_before_items_held_their_run_is_refused_saying_what_to_do(tiny_spec, tmp_path, monkeypatch):
    import sqlite3

    from vital_fv import VitalError
    from vital_fv.atlas import run_atlas

    monkeypatch.setattr("vital_fv.zoo.load_model", lambda *a, **k: tiny_spec)
    assert main(["atlas", "plan", "--model", "tiny", "--classes", "1", "--methods", "fourier", "--steps", "2",
                 "--out", str(tmp_path / "job")]) == 0
    con = sqlite3.connect(tmp_path / "job" / "atlas.sqlite")  # as a version 1 ledger: no run descriptions
    with con:
        con.execute("UPDATE items SET spec = NULL")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(VitalError, match="planned by an older vital-fv.*--overwrite"):
        run_atlas(tmp_path / "job", device="cpu", progress=False)
    assert not (tmp_path / "job" / "images").exists()
    assert Ledger.open(tmp_path / "job").counts()["pending"] == 1  # still read (status, gallery)
