// vital study: the participant's page. One trial at a time from the server; every text from the server is shown
// as text (textContent), never as HTML. The token lives in sessionStorage (this tab only, so a reload continues
// the study but a shared computer's next person does not resume it) and is removed at the end.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY = "vital-study-token";
  const PLATFORM = ["PROLIFIC_PID", "STUDY_ID", "SESSION_ID"];
  const PART_NAMES = { "rate-class": "Rating images and words", "rate-unit": "Rating images and photos",
    "label": "Naming images", "2afc": "Choosing photos" };
  let token = sessionStorage.getItem(KEY);
  let texts = {};
  let examples = {};
  const CAPTIONS = {
    "rate-class": (e) => "An example: this photo shows the word “" + e.word + "” very well, a 5.",
    "rate-unit": () => "An example: the large image has what the small photos have in common (a cat's face), a 5.",
    "label": (e) => "An example: for this image, one would type “" + e.word + "”.",
  };
  let instructed = null;  // the part whose instructions were just read
  let shownAt = 0;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else if (k === "class") node.className = v; else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  // Plain text with blank lines between paragraphs, as paragraphs (text nodes: never markup).
  function paragraphs(node, text) {
    node.replaceChildren(...String(text || "").split(/\n\s*\n/).filter((p) => p.trim())
      .map((p) => el("p", { text: p.replace(/\s*\n\s*/g, " ") })));
  }

  function show(id) {
    for (const s of ["welcome", "about-you", "instructions", "trial", "done"]) $(s).hidden = s !== id;
  }

  async function api(method, path, body) {
    for (let attempt = 0; ; attempt++) {  // a dropped connection is retried; the server stores an answer once
      try {
        const r = await fetch(path, { method, headers: { "Content-Type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body) });
        const data = await r.json().catch(() => ({}));
        if (!r.ok) throw Object.assign(new Error(data.detail || r.statusText), { status: r.status });
        return data;
      } catch (e) {
        if (e.status || attempt >= 4) throw e;
        await new Promise((ok) => setTimeout(ok, 500 * (attempt + 1)));
      }
    }
  }

  const img = (id, alt) => el("img", { src: "/img/" + id + ".png", alt: alt || "" });

  function scale(onPick) {
    const box = el("div", { class: "scale" }, el("span", { class: "hint", text: "1 = not at all" }));
    for (let v = 1; v <= 5; v++) {
      const b = el("button", { type: "button", text: String(v) });
      b.dataset.score = String(v);
      b.addEventListener("click", () => onPick(v));
      box.append(b);
    }
    box.append(el("span", { class: "hint", text: "5 = very well" }));
    return box;
  }

  async function send(n, value) {
    $("error").textContent = "";
    try {
      await api("POST", "/api/participants/" + token + "/answers", { n, value, ms: Math.round(performance.now() - shownAt) });
      await next();
    } catch (e) {
      $("error").textContent = e.message;
    }
  }

  function instructions(t) {
    show("instructions");
    $("instr-part").textContent = PART_NAMES[t.part] || t.part;
    paragraphs($("instr-text"), (texts.instructions || {})[t.part]);
    const ex = examples[t.part], fig = $("instr-example");
    fig.replaceChildren();
    fig.hidden = !ex;
    if (ex) {
      if (ex.refs) fig.append(el("div", { class: "refs" }, ...ex.refs.map((id) => img(id, "example reference"))));
      fig.append(img(ex.images[0], "example image"), el("figcaption", { text: CAPTIONS[t.part](ex) }));
    }
    $("instr-next").onclick = () => { instructed = t.part; render(t); };
    $("instr-next").focus();
  }

  function render(t) {
    if (t.first && instructed !== t.part) { instructions(t); return; }
    show("trial");
    $("progress").textContent = "Question " + (t.n + 1) + " of " + t.total;
    $("refs").replaceChildren();
    $("stimulus").replaceChildren();
    $("controls").replaceChildren();
    $("error").textContent = "";
    $("demo-note").hidden = !t.demo;
    document.body.dataset.part = t.part;
    document.body.dataset.demo = t.demo ? "1" : "";
    if (t.part === "rate-class") {
      $("question").textContent = "How well does this image show the word “" + t.word + "”?";
      $("stimulus").append(img(t.images[0], "image to rate"));
      $("controls").append(scale((v) => send(t.n, v)));
    } else if (t.part === "rate-unit") {
      $("question").textContent = "How well does the large image reflect what the small photos have in common?";
      $("refs").append(...t.refs.map((id) => img(id, "reference")));
      $("stimulus").append(img(t.images[0], "image to rate"));
      $("controls").append(scale((v) => send(t.n, v)));
    } else if (t.part === "label") {
      $("question").textContent = "What does this image show? A word or a short description.";
      $("stimulus").append(img(t.images[0], "image to name"));
      const input = el("input", { type: "text", id: "label", maxLength: 200, autocomplete: "off" });
      const go = el("button", { type: "button", id: "label-send", text: "Send" });
      const submit = () => { if (input.value.trim()) send(t.n, input.value.trim()); };
      go.addEventListener("click", submit);
      input.addEventListener("keydown", (e) => { if (e.key === "Enter") submit(); });
      $("controls").append(input, go);
      input.focus();
    } else {
      $("question").textContent = "The top images show what a unit of the network responds to. Which photo below makes it respond more?";
      $("refs").append(...t.refs.map((id) => img(id, "what the unit responds to")));
      let choice = null;
      const pair = el("div", { class: "pair" });
      const buttons = {};
      const feedback = el("p", { class: "feedback", id: "feedback" });
      for (const [k, id] of [["a", t.queries[0]], ["b", t.queries[1]]]) {
        buttons[k] = el("button", { type: "button", text: k.toUpperCase() });
        buttons[k].dataset.choice = k;
        buttons[k].addEventListener("click", () => {
          choice = k;
          for (const b of Object.values(buttons)) b.classList.toggle("selected", b === buttons[k]);
          if (t.demo) {
            feedback.textContent = (k === t.answer ? "Right: " : "Not quite: ") + "photo " + t.answer.toUpperCase() +
              " makes the unit respond more; it looks most like the top images.";
          }
          conf.hidden = false;
        });
        pair.append(el("figure", {}, img(id, "photo " + k.toUpperCase()), buttons[k]));
      }
      $("stimulus").append(pair);
      const conf = el("div", { class: "scale" }, el("span", { class: "hint", text: "How sure are you?" }));
      conf.hidden = true;
      for (const [v, word] of [[1, "guessing"], [2, "fairly sure"], [3, "sure"]]) {
        const b = el("button", { type: "button", text: word });
        b.dataset.confidence = String(v);
        b.addEventListener("click", () => { if (choice) send(t.n, { choice, confidence: v }); });
        conf.append(b);
      }
      $("controls").append(feedback, conf);
    }
    shownAt = performance.now();
  }

  function finish(t) {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);  // a token left by an older version of this page
    token = null;
    paragraphs($("debrief"), texts.debrief);
    if (t.completion_code || t.completion_url) {
      $("completion").hidden = false;
      $("completion-code").textContent = t.completion_code || "";
      $("completion-code").parentElement.hidden = !t.completion_code;
      if (t.completion_url) { $("completion-link").href = t.completion_url; $("completion-link").hidden = false; }
    }
    show("done");
  }

  async function next() {
    const t = await api("GET", "/api/participants/" + token + "/next");
    if (t.done) { finish(t); return; }
    render(t);
  }

  function platformIds() {
    const q = new URLSearchParams(location.search), ids = {};
    for (const k of PLATFORM) if (q.get(k)) ids[k] = q.get(k);
    return Object.keys(ids).length ? ids : undefined;
  }

  async function main() {
    const about = await api("GET", "/api/study");
    texts = about.texts || {};
    examples = about.examples || {};
    $("title").textContent = about.title;
    document.title = about.title;
    paragraphs($("welcome-text"), texts.welcome);
    paragraphs($("consent-text"), texts.consent);
    $("duration").textContent = texts.duration || "";
    if (token) {
      try { await next(); return; } catch (e) { token = null; sessionStorage.removeItem(KEY); }
    }
    show("welcome");
    $("consent").addEventListener("change", () => { $("start").disabled = !$("consent").checked; });
    $("start").addEventListener("click", async () => {
      $("start-error").textContent = "";
      try {
        token = (await api("POST", "/api/participants", { consent: true, platform: platformIds() })).token;
        sessionStorage.setItem(KEY, token);
        show("about-you");
      } catch (e) { $("start-error").textContent = e.message; }
    });
    $("about-next").addEventListener("click", async () => {
      const age = $("age").value || null, gender = $("gender").value || null;
      if (age || gender) await api("POST", "/api/participants/" + token + "/demographics", { age, gender });
      await next();
    });
  }

  main();
})();
