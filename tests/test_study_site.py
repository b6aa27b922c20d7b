"""A participant in a real headless Chromium: consent, every part by clicking and typing, the end page; then the
rows in SQLite and the report. A screenshot of each part in tmp_path."""

from __future__ import annotations

from study_helpers import study_results

from vital_fv.study import Store, create_study
from vital_fv.study.report import make_report
from vital_fv.study.simulate import _background_server


def test_a_participant_in_the_browser(page, tmp_path):
    study = tmp_path / "s"
    create_study(study_results(tmp_path / "r"), study, participants_per_subset=2, title='Images <b>"study"</b>')
    server, url = _background_server(str(study))
    try:
        page.goto(url + "/")
        # The page's script sets the title after its first API call: wait for it, not for the load event.
        page.wait_for_function("document.querySelector('#title').textContent !== 'A study of images'")
        assert page.text_content("#title") == 'Images <b>"study"</b>'  # text, not markup
        assert page.is_disabled("#start")
        page.check("#consent")
        page.click("#start")
        page.select_option("#age", "25-34")
        page.click("#about-next")
        shots, answered = set(), 0
        while True:
            page.wait_for_selector("#trial:not([hidden]) #question, #done:not([hidden])")
            if page.is_visible("#done"):
                break
            part = page.evaluate("document.body.dataset.part")
            before = page.text_content("#progress")
            page.wait_for_function("[...document.querySelectorAll('#app img')].every(i => i.complete && "
                                   "i.naturalWidth > 0)")
            if part not in shots:
                page.screenshot(path=str(tmp_path / f"{part}.png"), full_page=True)
                shots.add(part)
            if part in ("rate-class", "rate-unit"):
                page.click("button[data-score='4']")
            elif part == "label":
                page.fill("#label", "<i>a cup</i> of coffee")
                page.click("#label-send")
            else:
                assert not page.is_visible("button[data-confidence='2']")  # confidence after a choice
                page.click("button[data-choice='b']")
                page.click("button[data-confidence='2']")
            answered += 1
            page.wait_for_function(f"document.querySelector('#progress').textContent !== {before!r} || "
                                   "!document.querySelector('#done').hidden")
        page.screenshot(path=str(tmp_path / "done.png"))
        assert shots == {"rate-class", "rate-unit", "label", "2afc"}
        store = Store(study)
        rows = store.rows()
        assert len(rows) == answered and all(r["finished"] for r in rows)
        labels = {r["value"] for r in rows if r["part"] == "label"}
        assert labels == {"<i>a cup</i> of coffee"}  # stored as typed
        assert store.con.execute("SELECT age FROM demographics").fetchone()[0] == "25-34"
        assert all(r["ms"] and r["ms"] > 0 for r in rows)
        make_report(study, tmp_path / "report", n_boot=100)
        assert (tmp_path / "report" / "parts.png").is_file()
        page.reload()  # the finished participant's page: the study is done for them, a new visit starts afresh
        page.wait_for_selector("#welcome:not([hidden])")
        assert page.problems == []
    finally:
        server.should_exit = True
