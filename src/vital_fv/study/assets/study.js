// vital study: the participant's page. One trial at a time from the server; every text from the server is shown
// as text (textContent), never as HTML. The token lives in localStorage, so a reload continues the study.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY = "vital-study-token";
  let token = localStorage.getItem(KEY);
  let shownAt = 0;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else if (k === "class") node.className = v; else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function show(id) {
    for (const s of ["welcome", "about-you", "trial", "done"]) $(s).hidden = s !== id;
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

  function render(t) {
    show("trial");
    $("progress").textContent = "Question " + (t.n + 1) + " of " + t.total;
    $("refs").replaceChildren();
    $("stimulus").replaceChildren();
    $("controls").replaceChildren();
    $("error").textContent = "";
    document.body.dataset.part = t.part;
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
      for (const [k, id] of [["a", t.queries[0]], ["b", t.queries[1]]]) {
        buttons[k] = el("button", { type: "button", text: k.toUpperCase() });
        buttons[k].dataset.choice = k;
        buttons[k].addEventListener("click", () => {
          choice = k;
          for (const b of Object.values(buttons)) b.classList.toggle("selected", b === buttons[k]);
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
      $("controls").append(conf);
    }
    shownAt = performance.now();
  }

  async function next() {
    const t = await api("GET", "/api/participants/" + token + "/next");
    if (t.done) { show("done"); localStorage.removeItem(KEY); return; }
    render(t);
  }

  async function main() {
    const about = await api("GET", "/api/study");
    $("title").textContent = about.title;
    if (token) {
      try { await next(); return; } catch (e) { token = null; localStorage.removeItem(KEY); }
    }
    show("welcome");
    $("consent").addEventListener("change", () => { $("start").disabled = !$("consent").checked; });
    $("start").addEventListener("click", async () => {
      try {
        token = (await api("POST", "/api/participants", { consent: true })).token;
        localStorage.setItem(KEY, token);
        show("about-you");
      } catch (e) { alert(e.message); }
    });
    $("about-next").addEventListener("click", async () => {
      const age = $("age").value || null, gender = $("gender").value || null;
      if (age || gender) await api("POST", "/api/participants/" + token + "/demographics", { age, gender });
      await next();
    });
  }

  main();
})();
