"""``vital study serve``: the study's web server (FastAPI on uvicorn) over its SQLite database.

The browser gets the pages (files in ``study/assets``), a participant token, one trial at a time (prompts and
opaque image ids, never the method or the class of a label trial) and the images by id from the study folder. An
answer is checked (score 1-5, a label of at most 200 characters, a 2AFC choice and confidence 1-3), then committed
before the reply; the same answer twice is stored once, a different one for an answered trial is refused, and an
answer is taken only for the trial the participant is on (sent to them, not yet answered). The status and export
endpoints need the study's admin token in the ``X-Admin-Token`` header (never in a URL, where logs keep it); new
participants are limited per minute. A recruitment platform's ids (``PROLIFIC_PID`` ...) from the page's URL are
stored apart from the answers; the completion code is sent only once the last trial is answered.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, HTTPException  # the study extra: pip install 'vital-fv[study]'
from fastapi.responses import FileResponse, HTMLResponse, Response

from ..errors import VitalError
from .design import trials_for
from .store import Store

MAX_LABEL = 200
MAX_TRIAL = 100_000  # no study has more trials; a bigger n is malformed, not missing
MAX_NEW_PER_MINUTE = 60
AdminHeader = Annotated[str | None, Header()]
ASSETS = ("index.html", "study.js", "style.css")
_ID = re.compile(r"[0-9a-f]{16}")
# URL parameters of recruitment platforms kept with a participant (Prolific's; others by the same names).
PLATFORM_IDS = ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")
_PLATFORM_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_platform(given: Any) -> dict[str, str]:
    """The platform ids as stored, or ``ValueError``: known names only, short plain values."""
    if given is None:
        return {}
    if not isinstance(given, dict) or any(k not in PLATFORM_IDS for k in given):
        raise ValueError(f"platform ids are an object with some of {', '.join(PLATFORM_IDS)}")
    for k, v in given.items():
        if not isinstance(v, str) or not _PLATFORM_VALUE.fullmatch(v):
            raise ValueError(f"{k} is 1 to 64 letters, digits, '_', '.' or '-'")
    return dict(given)


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


def make_app(folder: str | Path, max_new_per_minute: int = MAX_NEW_PER_MINUTE) -> Any:
    """The ASGI app of the study in ``folder``; at most ``max_new_per_minute`` participants start per minute."""
    store = Store(folder)
    if not _whole(max_new_per_minute) or max_new_per_minute < 1:
        raise VitalError(f"--max-new-per-minute must be at least 1 (got {max_new_per_minute})")
    recent: collections.deque[float] = collections.deque()
    lock = threading.Lock()
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
        if not store.is_admin(token):
            raise HTTPException(401, f"this needs the study's admin token in the X-Admin-Token header (it is in "
                                     f"{store.token_file.name} in the study folder)")

    def admit() -> None:
        """A sliding one-minute window over new participants: a flood is refused, not stored."""
        with lock:
            now = time.monotonic()
            while recent and recent[0] < now - 60:
                recent.popleft()
            if len(recent) >= max_new_per_minute:
                raise HTTPException(429, "too many new participants this minute: please try again in a minute")
            recent.append(now)

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
        return {"title": design["title"], "parts": design["parts"], "texts": design.get("texts", {}),
                "examples": design.get("examples", {})}

    @app.post("/api/participants")
    def start(body: Annotated[dict, Body()], x_admin_token: AdminHeader = None) -> Any:
        if body.get("consent") is not True:
            raise HTTPException(400, "taking part needs consent: tick the box on the welcome page")
        pilot = body.get("pilot", False)
        if pilot is not False:
            if pilot is not True:
                raise HTTPException(422, "pilot is true or false")
            admin(x_admin_token)  # only the researcher starts pilots (they take no slot and are left out)
        try:
            platform = check_platform(body.get("platform"))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        if not pilot:
            admit()
        try:
            token = store.add_participant(make_trials, pilot=pilot, platform=platform)
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
        if trial is not None:
            return trial
        done = {"done": True}
        end = design.get("completion") or {}
        return {**done, **{k: v for k, v in end.items() if v}}

    @app.post("/api/participants/{token}/answers")
    def answer(token: str, body: Annotated[dict, Body()]) -> Any:
        participant(token)
        n, ms = body.get("n"), body.get("ms")
        if not _whole(n) or not 0 <= n < MAX_TRIAL:
            raise HTTPException(422, f"n is a trial number from 0 to {MAX_TRIAL - 1} (got {n!r})")
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms < 86_400_000):
            raise HTTPException(422, f"ms is a response time in milliseconds, 0 to 86400000, or left out (got {ms!r})")
        trial = store.trial(token, n)
        if trial is None:
            raise HTTPException(404, f"no trial {n} for this participant")
        try:
            value = check_answer(trial["part"], body.get("value"))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        outcome = store.answer(token, n, value, None if ms is None else int(ms))
        if outcome == "conflict":
            raise HTTPException(409, f"trial {n} is already answered differently: answers cannot be changed")
        if outcome == "not shown":
            raise HTTPException(409, f"trial {n} is not the one this participant is on: answer the trial that "
                                     "/next shows")
        return {"stored": outcome == "stored", "next": store.next_trial(token) is not None}

    @app.get("/img/{name}")
    def image(name: str) -> Any:
        ident = name.removesuffix(".png")
        path = store.stimulus_file(ident) if _ID.fullmatch(ident) else None
        if path is None or not path.is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/admin/status")
    def status(x_admin_token: AdminHeader = None) -> Any:
        admin(x_admin_token)
        return store.counts()

    @app.get("/api/admin/export.csv")
    def export(x_admin_token: AdminHeader = None) -> Any:
        from .report import export_csv

        admin(x_admin_token)
        return Response(export_csv(store), media_type="text/csv")

    return app


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_new_per_minute: int = MAX_NEW_PER_MINUTE) -> None:
    """Run the server until Ctrl-C; prints the participants' URL and where the admin token is (not the token)."""
    import uvicorn

    app = make_app(folder, max_new_per_minute)
    store = Store(folder)
    print(f"study: http://{host}:{port}/  (admin token in {store.token_file})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
