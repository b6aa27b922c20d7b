"""``vital study simulate``: participants played by a classifier, through the same HTTP interface people use, so a
study can be dry-run (and load-tested) before anyone sees it.

A simulated participant sees only what the page shows: it rates a class image by its probability of the word's
class, labels an image with its top-1 class name, rates a unit image by how close its features are to the
reference crops', and picks the 2AFC query whose features are closest to the reference visualizations' (with
confidence from the margin). Simulated participants are pilots: started with the admin token, they take no slot and
are left out of status, export and report unless those are asked for pilots.
"""

from __future__ import annotations

import io
import random
import threading
from typing import Any

from ..errors import VitalError


class ModelParticipant:
    """Answers from a classifier (a zoo model), loaded once and shared by the simulated participants."""

    def __init__(self, model: str = "efficientnet_lite0", device: str = "auto") -> None:
        from ..device import resolve_device
        from ..zoo import load_model

        self.spec = load_model(model)
        self.device = resolve_device(device)
        self.spec.module.to(self.device).eval()
        self._lock = threading.Lock()  # one forward at a time: the CPU is shared anyway

    def _forward(self, pngs: list[bytes]) -> tuple[Any, Any]:
        import numpy as np
        import torch
        from PIL import Image
        from torch.nn import functional as F

        from ..features import capture

        size = self.spec.preprocess.input_size
        x = torch.cat([F.interpolate(torch.from_numpy(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).copy())
                                     .permute(2, 0, 1)[None].float() / 255, size=(size, size), mode="bilinear",
                                     antialias=True) for b in pngs])
        layer = self.spec.last_hidden_layer()
        with self._lock, torch.no_grad(), capture(self.spec.module, [layer], self.spec.name) as feats:
            logits = self.spec.module(self.spec.preprocess.normalize(x).to(self.device))
            act = feats[layer]
            f = act.flatten(2).mean(-1) if act.dim() == 4 else act.mean(1) if act.dim() == 3 else act
        return logits.softmax(-1).cpu(), F.normalize(f.float().cpu(), dim=-1)

    def answer(self, trial: dict[str, Any], get: Any) -> Any:
        part = trial["part"]
        if part == "rate-class":
            probs, _ = self._forward([get(trial["images"][0])])
            names = [n.lower() for n in self.spec.class_names]
            word = trial["word"].lower()
            p = float(probs[0, names.index(word)]) if word in names else 0.0
            return 1 + min(4, int(p * 5))
        if part == "label":
            probs, _ = self._forward([get(trial["images"][0])])
            return self.spec.class_names[int(probs[0].argmax())]
        if part == "rate-unit":
            _, f = self._forward([get(i) for i in trial["refs"] + trial["images"]])
            sim = float((f[:-1].mean(0) @ f[-1]).clamp(0, 1))
            return 1 + min(4, int(sim * 5))
        _, f = self._forward([get(i) for i in trial["refs"] + trial["queries"]])
        ref = f[: len(trial["refs"])].mean(0)
        a, b = float(ref @ f[-2]), float(ref @ f[-1])
        margin = abs(a - b)
        return {"choice": "a" if a >= b else "b", "confidence": 3 if margin > 0.1 else 2 if margin > 0.03 else 1}


def random_answer(trial: dict[str, Any], rng: random.Random) -> Any:
    """A participant answering at random (load tests)."""
    part = trial["part"]
    if part in ("rate-class", "rate-unit"):
        return rng.randint(1, 5)
    if part == "label":
        return rng.choice(["cup", "dog", "a red car", "espresso", "building"])
    return {"choice": rng.choice("ab"), "confidence": rng.randint(1, 3)}


def run_participant(base: str, answer: Any, client: Any = None, demographics: bool = False,
                    admin_token: str | None = None) -> dict[str, Any]:
    """One participant from consent to the end page over HTTP; retries a dropped connection like the page does.
    With ``admin_token`` the participant is a pilot."""
    import time

    import httpx

    http = client or httpx.Client(base_url=base, timeout=30)
    cache: dict[str, bytes] = {}

    def call(method: str, path: str, **kw: Any) -> Any:
        for attempt in range(40):
            try:
                r = http.request(method, path, **kw)
            except httpx.TransportError:
                time.sleep(0.25 * (1 + attempt % 4))
                continue
            if r.status_code >= 500:
                time.sleep(0.25)
                continue
            return r
        raise VitalError(f"the study server at {base} does not answer")

    def get(ident: str) -> bytes:
        if ident not in cache:
            cache[ident] = call("GET", f"/img/{ident}.png").content
        return cache[ident]

    r = call("POST", "/api/participants", json={"consent": True, "pilot": admin_token is not None},
             headers={"X-Admin-Token": admin_token} if admin_token else {})
    if r.status_code != 200:
        raise VitalError(f"the study refused a participant: {r.json().get('detail')}")
    token = r.json()["token"]
    if demographics:
        call("POST", f"/api/participants/{token}/demographics", json={"age": None, "gender": "prefer not to say"})
    answered = 0
    while True:
        trial = call("GET", f"/api/participants/{token}/next").json()
        if trial.get("done"):
            break
        value = answer(trial, get)
        r = call("POST", f"/api/participants/{token}/answers", json={"n": trial["n"], "value": value, "ms": 800})
        if r.status_code not in (200,):
            raise VitalError(f"answer refused: {r.status_code} {r.text}")
        answered += 1
    if client is None:
        http.close()
    return {"token": token, "answers": answered, "end": trial}


def simulate(folder: str, participants: int, *, model: str | None = "efficientnet_lite0", url: str | None = None,
             concurrency: int = 4, seed: int = 0, device: str = "auto") -> list[dict[str, Any]]:
    """``participants`` simulated participants (pilots) against ``url`` (a running server of this study), or
    against this study served on a free local port for the duration. ``model=None``: random answers."""
    from concurrent.futures import ThreadPoolExecutor

    from ..options import check_positive
    from .store import Store

    check_positive("--participants", participants)
    check_positive("--concurrency", concurrency)
    admin_token = Store(folder).admin_token
    server = None
    if url is None:
        server, url = _background_server(folder)
    try:
        player = ModelParticipant(model, device) if model else None
        rngs = [random.Random(seed + i) for i in range(participants)]

        def one(i: int) -> dict[str, Any]:
            answer = player.answer if player else (lambda t, _get, r=rngs[i]: random_answer(t, r))
            return run_participant(url, answer, admin_token=admin_token)

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, range(participants)))
    finally:
        if server is not None:
            server.should_exit = True


def _background_server(folder: str) -> tuple[Any, str]:
    """The study on 127.0.0.1 and a free port, in a thread (uvicorn), until ``should_exit``."""
    import socket
    import time

    import uvicorn

    from .server import make_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(folder), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise VitalError("the study server did not start")
    return server, f"http://127.0.0.1:{port}"
