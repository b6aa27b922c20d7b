"""The gallery in a real headless Chromium, opened from disk: search, an item, transparency, the keyboard, the
comparison and issues pages; no console error, and hostile names shown as text. Screenshots in tmp_path."""

from __future__ import annotations

import shutil

from gallery_helpers import HOSTILE, results_folder

from vital_fv.gallery import build_gallery


def test_the_site_from_disk_in_a_browser(page, tmp_path):
    results = results_folder(tmp_path / "r")
    shutil.copy(results / "vital" / "tiny-1-one-vital-s0.png", results / "vital" / "tiny-1-one-vital-s0.rgba.png")
    site = tmp_path / "site"
    build_gallery(results, site, progress=False)
    page.goto((site / "index.html").as_uri())
    assert page.text_content("#count") == "9 of 9 items"
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    page.fill("#search", "one")
    page.wait_for_function("document.querySelector('#count').textContent.startsWith('4 of')")
    page.select_option("#facet-method", "vital")
    page.wait_for_function("document.querySelector('#count').textContent.startsWith('2 of')")
    page.click(".card >> nth=0")
    page.wait_for_selector("#fields tr")
    assert page.text_content("#title") == "1 one — vital, seed 0"
    assert page.get_attribute("#image", "src").endswith("tiny-1-one-vital-s0.png")
    page.check("#transparency")
    assert page.get_attribute("#image", "src").endswith(".rgba.png")
    assert "checker" in page.get_attribute("#frame", "class")
    assert page.locator("#siblings .card").count() == 3  # the other seed and the other method
    assert page.locator("#loss polyline").count() == 2
    assert page.is_visible("#metrics-box") and "judge_top5" in page.text_content("#metrics")  # evaluate's row
    page.screenshot(path=str(tmp_path / "item.png"), full_page=True)
    page.keyboard.press("ArrowRight")  # the next item of the filtered list
    page.wait_for_selector("#fields tr")
    assert page.text_content("#title") == "1 one — vital, seed 1"
    page.goto((site / "index.html").as_uri() + "#q=alert")
    page.click(".card >> nth=0")
    page.wait_for_selector("#fields tr")
    assert HOSTILE in page.text_content("#title")  # shown as text: no script ran, no markup made
    assert page.locator("#title script").count() == 0
    page.goto((site / "compare.html").as_uri())
    assert page.locator("#compare tr").count() == 1 + 3  # header + 2 classes + 1 unit
    assert [page.locator("#compare th").nth(i).text_content() for i in (1, 2)] == ["vital", "maco"]  # registry order
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    page.goto((site / "figures.html").as_uri())
    assert page.locator("#figures img").count() == 1 and "layer: act2" in page.text_content("#figures")
    page.goto((site / "issues.html").as_uri())
    assert "broken.json" in page.text_content("#issues")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto((site / "index.html").as_uri())
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    assert page.problems == []
