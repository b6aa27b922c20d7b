"""``vital study serve``: the study's web server (FastAPI on uvicorn) over its SQLite database.

The browser gets the pages (files in ``study/assets``), a participant token, one trial at a time (prompts and
opaque image ids, never the method or the class of a label trial) and the images by id from the study folder. An
answer is checked (score 1-5, a label of at most 200 characters, a 2AFC choice and confidence 1-3), then committed
before the reply; the same answer twice is stored once, a different one for an answered trial is refused. The
status and export endpoints need the study's admin token.
"""

from __future__ import annotations

import csv
import io
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, HTTPException, Query  # the study extra: pip install 'vital-fv[study]'
from fastapi.responses import FileResponse, HTMLResponse, Response

from ..errors import VitalError
from .design import trials_for
from .store import Store

MAX_LABEL = 200
AdminHeader = Annotated[str | None, Header()]
AdminQuery = Annotated[str | None, Query()]
ASSETS = ("index.html", "study.js", "style.css")
_ID = re.compile(r"[0-9a-f]{16}")


def check_answer(part: str, value: Any) -> Any:
    """The answer as stored, or ``ValueError`` saying what a valid one is."""
    if part in ("rate-class", "rate-unit"):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise ValueError("a score is a whole number from 1 (worst) to 5 (best)")
        return value
    if part == "label":
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a label is a word or a short description")
        if len(value) > MAX_LABEL:
            raise ValueError(f"a label has at most {MAX_LABEL} characters")
        return value.strip()
    if not isinstance(value, dict) or value.get("choice") not in ("a", "b") or \
            isinstance(value.get("confidence"), bool) or value.get("confidence") not in (1, 2, 3):
        raise ValueError('a 2AFC answer is {"choice": "a" or "b", "confidence": 1, 2 or 3}')
    return {"choice": value["choice"], "confidence": value["confidence"]}


def make_app(folder: str | Path) -> Any:
    """The ASGI app of the study in ``folder``."""
    store = Store(folder)
    design = store.design
    make_trials = trials_for(design)
    assets = resources.files("vital_fv.study") / "assets"
    app = FastAPI(title="vital study", docs_url=None, redoc_url=None, openapi_url=None)

    def participant(token: str) -> Any:
        row = store.participant(token)
        if row is None:
            raise HTTPException(404, "unknown participant token: start again from the welcome page")
        return row

    def admin(token: str | None) -> None:
        if token != store.admin_token:
            raise HTTPException(401, "this needs the study's admin token (printed by `vital study serve`)")

    @app.get("/", response_class=HTMLResponse)
    def index() -> Any:
        return HTMLResponse((assets / "index.html").read_text())

    @app.get("/static/{name}")
    def static(name: str) -> Any:
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        media = {"js": "text/javascript", "css": "text/css", "html": "text/html"}[name.rsplit(".", 1)[-1]]
        return Response((assets / name).read_bytes(), media_type=media)

    @app.get("/api/study")
    def about() -> Any:
        return {"title": design["title"], "parts": design["parts"]}

    @app.post("/api/participants")
    def start(body: Annotated[dict, Body()]) -> Any:
        if body.get("consent") is not True:
            raise HTTPException(400, "taking part needs consent: tick the box on the welcome page")
        try:
            token = store.add_participant(make_trials)
        except VitalError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"token": token}

    @app.post("/api/participants/{token}/demographics")
    def demographics(token: str, body: Annotated[dict, Body()]) -> Any:
        participant(token)
        age, gender = body.get("age"), body.get("gender")
        ages = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+", None)
        genders = ("female", "male", "non-binary", "other", "prefer not to say", None)
        if age not in ages or gender not in genders:
            raise HTTPException(400, f"age is one of {ages[:-1]} and gender one of {genders[:-1]}, or left out")
        store.demographics(token, age, gender)
        return {"ok": True}

    @app.get("/api/participants/{token}/next")
    def next_trial(token: str) -> Any:
        participant(token)
        trial = store.next_trial(token)
        return {"done": True} if trial is None else trial

    @app.post("/api/participants/{token}/answers")
    def answer(token: str, body: Annotated[dict, Body()]) -> Any:
        participant(token)
        n = body.get("n")
        trial = store.trial(token, n) if isinstance(n, int) and not isinstance(n, bool) else None
        if trial is None:
            raise HTTPException(404, f"no trial {n!r} for this participant")
        try:
            value = check_answer(trial["part"], body.get("value"))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        ms = body.get("ms")
        ms = int(ms) if isinstance(ms, (int, float)) and not isinstance(ms, bool) and 0 <= ms < 86_400_000 else None
        outcome = store.answer(token, n, value, ms)
        if outcome == "conflict":
            raise HTTPException(409, f"trial {n} is already answered differently: answers cannot be changed")
        return {"stored": outcome == "stored", "next": store.next_trial(token) is not None}

    @app.get("/img/{name}")
    def image(name: str) -> Any:
        ident = name.removesuffix(".png")
        path = store.stimulus_file(ident) if _ID.fullmatch(ident) else None
        if path is None or not path.is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/admin/status")
    def status(x_admin_token: AdminHeader = None, token: AdminQuery = None) -> Any:
        admin(x_admin_token or token)
        return store.counts()

    @app.get("/api/admin/export.csv")
    def export(x_admin_token: AdminHeader = None, token: AdminQuery = None) -> Any:
        admin(x_admin_token or token)
        return Response(export_csv(store), media_type="text/csv")

    return app


def export_csv(store: Store) -> str:
    """One row per answer with its trial's key (participants by token; demographics are not joined)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["participant", "subset", "finished", "trial", "part", "method", "target", "label", "attention",
                "answer", "ms"])
    for r in store.rows():
        k = r["key"]
        w.writerow([r["token"], r["subset"], int(r["finished"]), r["n"], r["part"], k.get("method") or "",
                    k.get("target"), k.get("label"), int(bool(k.get("attention"))),
                    r["value"] if isinstance(r["value"], (str, int)) else
                    f"{r['value']['choice']} (confidence {r['value']['confidence']})", r["ms"] or ""])
    return buf.getvalue()


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until Ctrl-C; prints the participants' URL and the admin token."""
    import uvicorn

    app = make_app(folder)
    store = Store(folder)
    print(f"study: http://{host}:{port}/  (admin token: {store.admin_token})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
