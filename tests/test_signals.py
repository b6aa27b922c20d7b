"""Whatever stops a run that has done work, its latest images and records are on disk: SIGTERM, one Ctrl-C or
several (real subprocesses, real signals; the child gets SIGINT back, since a background job from a
non-interactive shell starts with it ignored)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vital_fv.signals import hold_signals, sigterm_as_interrupt


def _start(out: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "VITAL_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "vital_fv.cli", "visualize", "--class", "espresso", "--preset", "quick",
           "--steps", "400", "--n-refs", "4", "--device", "cpu", "--out", str(out), "--name", "run"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_steps(proc: subprocess.Popen, steps: int = 3, timeout: float = 120) -> None:
    """Until the progress bar shows ``steps`` steps done (tqdm writes to stderr)."""
    start, seen = time.time(), ""
    while time.time() - start < timeout:
        seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        if any(f"| {n}/400" in seen for n in range(steps, 400)):
            return
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the run did not get going: {seen[-500:]}")


@pytest.mark.parametrize(("signals", "code"), [((signal.SIGTERM,), 143), ((signal.SIGINT,), 130),
                                               ((signal.SIGINT, signal.SIGINT, signal.SIGINT), 130)])
def test_a_stopped_run_leaves_its_latest_image_and_record(signals, code, tmp_path):
    out = tmp_path / "out"
    proc = _start(out, tmp_path / "cache")
    _wait_for_steps(proc)
    for s in signals:  # the later Ctrl-Cs land while the first one's results are being written
        proc.send_signal(s)
        time.sleep(0.05)
    assert proc.wait(timeout=120) == code
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and 0 < record["steps_done"] < 400
    assert (out / "run.png").stat().st_size > 0 and (out / "run.rgba.png").is_file()
    assert not list(out.glob(".*.tmp"))  # no half-written file left behind


def test_signals_are_held_while_results_are_written_then_restored():
    before = signal.getsignal(signal.SIGINT)
    with hold_signals() as held:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    assert held == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt() as seen:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert seen == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
