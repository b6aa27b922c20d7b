"""Building the site: data files and thumbnails, an incremental rebuild, the refusal to write over other files,
and the optional server (127.0.0.1 only, the site and the results and nothing else)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from gallery_helpers import HOSTILE, results_folder, write_bad_records, write_result

from vital_fv.errors import VitalError
from vital_fv.gallery import build_gallery, make_server


def _index(site):
    text = (site / "data" / "index.js").read_text()
    return json.loads(text.removeprefix("window.VITAL_INDEX = ").rstrip().removesuffix(";"))


def test_build_then_a_rebuild_remakes_only_what_changed(tmp_path):
    results, site = results_folder(tmp_path / "r"), tmp_path / "site"
    first = build_gallery(results, site, progress=False)
    assert first["items"] == 9 and first["issues"] == 3 and first["made"] == 18  # a thumbnail + data per item
    data = _index(site)
    evil = next(it for it in data["items"] if it["name"] == HOSTILE)
    assert evil["thumb"].startswith("thumbs/") and evil["image"].startswith("../r/maco/")
    assert HOSTILE.lower() in evil["search"]
    assert all((site / p).is_file() for p in ("index.html", "item.html", "compare.html", "issues.html",
                                              "figures.html", "app.js", "style.css"))
    thumbs = {p.name: p.stat().st_mtime_ns for p in (site / "thumbs").glob("*.jpg")}
    again = build_gallery(results, site, progress=False)
    assert again["made"] == 0 and again["kept"] == 18
    (results / "vital" / "tiny-1-one-vital-s0.png").touch()  # touched, not changed: kept
    assert build_gallery(results, site, progress=False)["made"] == 0
    write_result(results / "vital", "tiny-1-one-vital-s0", index=1, name="one", colour=0.9)  # a new image + record
    write_result(results / "new", "tiny-3-three-s0", index=3, name="three")  # the job grew
    grown = build_gallery(results, site, progress=False)
    assert grown["items"] == 10 and grown["made"] == 3  # its thumbnail (the record is the same), the new two
    changed = {p.name for p in (site / "thumbs").glob("*.jpg") if thumbs.get(p.name) != p.stat().st_mtime_ns}
    assert changed == {"vital-tiny-1-one-vital-s0.jpg", "new-tiny-3-three-s0.jpg"}


def test_records_that_do_not_fit_the_schema_are_issues_and_the_rest_is_built(tmp_path):
    results, site = results_folder(tmp_path / "r"), tmp_path / "site"
    bad = write_bad_records(results / "bad", results / "vital" / "tiny-1-one-vital-s0.json")
    (results / "bad" / "garbled.json").write_text((results / "vital" / "tiny-1-one-vital-s0.json").read_text())
    (results / "bad" / "garbled.png").write_bytes(b"not a png")  # a good record, an image that cannot be read
    made = build_gallery(results, site, progress=False)
    assert made["items"] == 9 and made["issues"] == 3 + len(bad) + 1
    issues = {i["file"]: i["problem"] for i in _index(site)["issues"]}
    for name, field in bad:
        assert f"field {field}: expected" in issues[f"bad/{name}"]
    assert "unreadable image" in issues["bad/garbled.png"]
    assert len(list((site / "data" / "items").glob("*.js"))) == 9


def test_a_folder_with_other_files_is_refused(tmp_path):
    results = results_folder(tmp_path / "r")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(VitalError, match="holds other files"):
        build_gallery(results, tmp_path / "mine", progress=False)
    assert build_gallery(results, tmp_path / "mine", overwrite=True, progress=False)["items"] == 9
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"


def test_the_server_serves_the_site_and_results_only_on_localhost(tmp_path):
    results, site = results_folder(tmp_path / "r"), tmp_path / "site"
    build_gallery(results, site, progress=False)
    (tmp_path / "secret.txt").write_text("no")
    httpd, path = make_server(site, results, 0)
    assert httpd.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert b"vital gallery" in urllib.request.urlopen(base + path).read()
        assert urllib.request.urlopen(base + "/r/vital/tiny-1-one-vital-s0.png").status == 200
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(base + "/secret.txt")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(base + "/site/../secret.txt")
    finally:
        httpd.shutdown()
        httpd.server_close()
