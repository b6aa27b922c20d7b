"""A participant in a real headless Chromium, arriving from a recruitment platform's link: consent, the instructions
of every part, every part by clicking and typing (the 2AFC's demonstration first), the end page with the completion
code; then no token left in the browser, the platform ids stored apart, the rows in SQLite and the report.
Screenshots of each step in tmp_path (and in $VITAL_STUDY_SHOTS when set, to look at them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from study_helpers import study_results

from vital_fv.study import Store, create_study
from vital_fv.study.report import export_csv, make_report
from vital_fv.study.simulate import _background_server

CODE = "C0DE42X"


def test_a_participant_from_a_platform_link_in_the_browser(page, tmp_path):
    study = tmp_path / "s"
    texts = tmp_path / "texts.toml"
    texts.write_text('duration = "about 7 minutes"\n[instructions]\nlabel = "Name it. Example: \\"a red car\\"."\n')
    create_study(study_results(tmp_path / "r"), study, participants_per_subset=2, title='Images <b>"study"</b>',
                 texts=texts, completion_code=CODE,
                 completion_url=f"https://app.prolific.com/submissions/complete?cc={CODE}")
    server, url = _background_server(str(study))
    shots_dir = Path(os.environ.get("VITAL_STUDY_SHOTS") or tmp_path)
    shots_dir.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(url + "/?PROLIFIC_PID=5f1e2d3c4b5a69788796a5b4&STUDY_ID=64a1b2c3&SESSION_ID=sess_77")
        # The page's script sets the title after its first API call: wait for it, not for the load event.
        page.wait_for_function("document.querySelector('#title').textContent !== 'A study of images'")
        assert page.text_content("#title") == 'Images <b>"study"</b>'  # text, not markup
        assert page.text_content("#duration") == "about 7 minutes"
        assert "stored apart from your answers" in page.text_content("#consent-text")
        assert page.is_disabled("#start")
        page.screenshot(path=str(shots_dir / "welcome.png"), full_page=True)
        page.check("#consent")
        page.click("#start")
        page.select_option("#age", "25-34")
        page.click("#about-next")
        shots, answered, instructed, demo_seen = set(), 0, [], False
        while True:
            page.wait_for_selector("#trial:not([hidden]) #question, #done:not([hidden]), "
                                   "#instructions:not([hidden])")
            if page.is_visible("#done"):
                break
            if page.is_visible("#instructions"):
                part = page.text_content("#instr-part")
                instructed.append(part)
                text = page.text_content("#instr-text")
                assert "Example" in text or "demonstration" in text, part  # each part with an example
                if "Choosing" not in part:  # and a picture of one (the 2AFC has its demonstration trial)
                    page.wait_for_function("[...document.querySelectorAll('#instr-example img')].length > 0 && "
                                           "[...document.querySelectorAll('#instr-example img')].every("
                                           "i => i.complete && i.naturalWidth > 0)")
                    assert page.text_content("#instr-example figcaption").startswith("An example")
                if len(instructed) <= 2 or "Naming" in part:
                    page.screenshot(path=str(shots_dir / f"instructions-{len(instructed)}.png"), full_page=True)
                page.click("#instr-next")
                continue
            part = page.evaluate("document.body.dataset.part")
            demo = page.evaluate("document.body.dataset.demo") == "1"
            before = page.text_content("#progress")
            page.wait_for_function("[...document.querySelectorAll('#app img')].every(i => i.complete && "
                                   "i.naturalWidth > 0)")
            name = f"{part}-demo" if demo else part
            if name not in shots:
                page.screenshot(path=str(shots_dir / f"{name}.png"), full_page=True)
                shots.add(name)
            if part in ("rate-class", "rate-unit"):
                page.click("button[data-score='4']")
            elif part == "label":
                page.fill("#label", "<i>a cup</i> of coffee")
                page.click("#label-send")
            else:
                assert not page.is_visible("button[data-confidence='2']")  # confidence after a choice
                page.click("button[data-choice='b']")
                if demo:
                    demo_seen = True
                    assert page.text_content("#feedback").strip()  # the demonstration says which is right
                    page.screenshot(path=str(shots_dir / "2afc-demo-feedback.png"), full_page=True)
                page.click("button[data-confidence='2']")
            answered += 1
            page.wait_for_function(f"document.querySelector('#progress').textContent !== {before!r} || "
                                   "!document.querySelector('#done').hidden || "
                                   "!document.querySelector('#instructions').hidden")
        page.wait_for_selector("#completion-code")
        page.screenshot(path=str(shots_dir / "done.png"), full_page=True)
        assert page.text_content("#completion-code") == CODE
        assert page.get_attribute("#completion-link", "href").endswith(f"cc={CODE}")
        assert "balanced order" in page.text_content("#debrief")
        assert len(instructed) == 4 and "Naming images" in instructed
        assert {"rate-class", "rate-unit", "label", "2afc", "2afc-demo"} <= shots and demo_seen
        left = page.evaluate("JSON.stringify([Object.keys(localStorage), Object.keys(sessionStorage)])")
        assert left == "[[],[]]"  # nothing for the next person at this computer to resume
        store = Store(study)
        rows = store.rows()
        assert len(rows) == answered and all(r["finished"] for r in rows)
        labels = {r["value"] for r in rows if r["part"] == "label"}
        assert labels == {"<i>a cup</i> of coffee"}  # stored as typed
        assert store.con.execute("SELECT age FROM demographics").fetchone()[0] == "25-34"
        ids = dict(store.con.execute("SELECT name, value FROM platform_ids").fetchall())
        assert ids == {"PROLIFIC_PID": "5f1e2d3c4b5a69788796a5b4", "STUDY_ID": "64a1b2c3", "SESSION_ID": "sess_77"}
        assert "5f1e2d3c4b5a69788796a5b4" not in export_csv(store)  # stored apart from the answers
        assert all(r["ms"] and r["ms"] > 0 for r in rows)
        make_report(study, tmp_path / "report", n_boot=100)
        assert (tmp_path / "report" / "parts.png").is_file()
        if os.environ.get("VITAL_STUDY_SHOTS"):
            for name in ("parts.png", "per_target.png", "share_4_5.png"):
                shutil.copy(tmp_path / "report" / name, shots_dir / f"report-{name}")
        page.reload()  # the finished participant's page: the study is done for them, a new visit starts afresh
        page.wait_for_selector("#welcome:not([hidden])")
        assert page.problems == []
    finally:
        server.should_exit = True
