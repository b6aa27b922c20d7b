"""Shared fixtures: small models the tests build themselves, and an isolated prototype cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vital_fv.zoo import Preprocess, load_model


class TinyNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITAL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_spec():
    torch.manual_seed(0)
    return load_model(
        TinyNet(),
        layers=["act1", "act2"],
        preprocess=Preprocess(32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        class_names=["zero", "one", "two", "three"],
        name="tiny",
    )


@pytest.fixture(scope="session")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture
def refs_dir(tmp_path):
    """A folder of three small random-colour PNGs (references for the tiny model)."""
    from vital_fv.result import png_bytes

    folder = tmp_path / "refs"
    folder.mkdir()
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        (folder / f"r{i}.png").write_bytes(png_bytes(torch.rand(3, 40, 40, generator=g)))
    return folder


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's, driven by Playwright: browsers cannot be downloaded here), shared by the
    tests of the web pages. `make test` installs chromium; $VITAL_CHROMIUM points elsewhere."""
    import os
    import shutil

    from playwright.sync_api import sync_playwright

    path = os.environ.get("VITAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium: `make test` installs it (apt-get install chromium), or set VITAL_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path):
    """A fresh page that records console errors, page errors and dialogs (an alert would mean injected script)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    context.close()
