"""`vital study` on the command line: the new options checked before any work, each error naming its option; the
admin token never printed; create, simulate (pilots), status, export and report in a row."""

from __future__ import annotations

import pytest
from study_helpers import study_results

from vital_fv.cli import main


@pytest.mark.parametrize(("args", "words"), [
    (["--seed", "-1"], "--seed must be"),
    (["--abandon-after", "0"], "--abandon-after must be at least 1"),
    (["--completion-code", "has space"], "--completion-code"),
    (["--completion-url", "ftp://x"], "--completion-url"),
    (["--images", "nowhere"], "--images nowhere is not a folder"),
    (["--device", "tpu"], "--device"),
    (["--texts", "none.toml"], "--texts none.toml: no such file"),
    (["--parts", "rate-class,guess"], "--parts: unknown part 'guess'"),
])
def test_create_names_the_wrong_option_and_makes_nothing(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    results = study_results(tmp_path / "r")
    assert main(["study", "create", str(results), "--out", "s", *args]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_study_from_the_command_line(tmp_path, capsys):
    results = study_results(tmp_path / "r")
    study = tmp_path / "s"
    assert main(["study", "create", str(results), "--out", str(study), "--parts", "rate-class,label",
                 "--seed", "2", "--participants-per-subset", "2"]) == 0
    out = capsys.readouterr().out
    token = (study / "admin-token").read_text().strip()
    assert "seed 2" in out and "admin-token" in out and token not in out
    assert main(["study", "serve", str(study), "--max-new-per-minute", "0"]) == 2
    assert "--max-new-per-minute must be at least 1" in capsys.readouterr().err
    assert main(["study", "simulate", str(study), "--participants", "2", "--model", "none"]) == 0
    assert "2 simulated participants (pilots" in capsys.readouterr().out
    assert main(["study", "status", str(study)]) == 0
    assert "0 participants started" in capsys.readouterr().out
    assert main(["study", "status", str(study), "--pilots"]) == 0
    assert "2 participants started, 2 finished" in capsys.readouterr().out
    assert main(["study", "export", str(study), "--out", str(tmp_path / "a.csv")]) == 0
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 1  # the header: pilots left out
    assert main(["study", "report", str(study), "--out", str(tmp_path / "rep")]) == 2
    assert "no answers yet" in capsys.readouterr().err
    assert main(["study", "report", str(study), "--out", str(tmp_path / "rep"), "--pilots", "--n-boot", "20"]) == 0
    assert "| chance |" in capsys.readouterr().out
