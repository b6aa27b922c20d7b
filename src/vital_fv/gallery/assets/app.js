// vital gallery: renders the data files written by `vital gallery` (data/index.js, data/items/ID.js).
// Works from disk (file://) and over HTTP. Every piece of data reaches the page as text (textContent,
// attributes set as properties), never as HTML: a class or file name holding <script> or quotes shows as written.
"use strict";

(function () {
  const INDEX = window.VITAL_INDEX || { items: [], figures: [], issues: [] };
  const PAGE_SIZE = 120;
  const FACETS = ["model", "layer", "method", "seed", "status"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k in node) node[k] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // ------------------------------------------------------------------------------------------ filtering
  function readState() {
    const params = new URLSearchParams(location.hash.slice(1));
    const state = { q: params.get("q") || "", page: parseInt(params.get("page") || "1", 10) || 1 };
    for (const f of FACETS) state[f] = params.get(f) || "";
    return state;
  }

  function writeState(state) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v && !(k === "page" && v === 1)) params.set(k, v);
    history.replaceState(null, "", "#" + params.toString());
  }

  function matches(item, state) {
    for (const f of FACETS) if (state[f] && String(item[f]) !== state[f]) return false;
    if (!state.q) return true;
    const words = state.q.toLowerCase().split(/\s+/).filter(Boolean);
    const hay = item.search + " " + (item.index ?? "") + " " + (item.channel ?? "");
    return words.every((w) => hay.includes(w) || String(item.index) === w || String(item.channel) === w);
  }

  function controls(onChange) {
    const state = readState();
    const search = document.getElementById("search");
    search.value = state.q;
    const box = document.getElementById("facets");
    for (const f of FACETS) {
      const values = [...new Set(INDEX.items.map((it) => String(it[f] ?? "")))].filter((v) => v !== "").sort(
        (a, b) => a.localeCompare(b, undefined, { numeric: true }));
      if (values.length < 2 && !state[f]) continue;
      const select = el("select", { id: "facet-" + f, "aria-label": f },
        el("option", { value: "", text: "all" }), ...values.map((v) => el("option", { value: v, text: v })));
      select.value = state[f];
      select.addEventListener("change", () => { state[f] = select.value; state.page = 1; onChange(state); });
      box.append(el("label", {}, f + " ", select));
    }
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.q = search.value.trim(); state.page = 1; onChange(state); }, 120);
    });
    onChange(state);
  }

  function card(item) {
    const href = "item.html?id=" + encodeURIComponent(item.id);
    const meta = [item.method, "seed " + item.seed, item.status !== "complete" ? item.status : null]
      .filter(Boolean).join(" · ");
    if (!item.thumb) {
      return el("a", { class: "card missing", href, title: item.error || item.status },
        el("div", { class: "ph", text: item.status }), el("div", { class: "t", text: item.title }),
        el("div", { class: "m", text: meta }));
    }
    return el("a", { class: "card", href },
      el("img", { src: item.thumb, alt: item.title, loading: "lazy", width: 192, height: 192 }),
      el("div", { class: "t", text: item.title }), el("div", { class: "m", text: meta }));
  }

  function remember(list) {
    try { sessionStorage.setItem("vital-order", JSON.stringify(list.map((it) => it.id))); } catch (e) { /* */ }
  }

  // ----------------------------------------------------------------------------------------------- pages
  function indexPage() {
    document.getElementById("title").textContent = "vital gallery: " + (INDEX.title || "");
    document.getElementById("generated").textContent = "built " + (INDEX.generated || "");
    const issues = document.getElementById("issues-link");
    issues.textContent = "Issues (" + (INDEX.issues.length + INDEX.items.filter((i) => i.status === "failed").length) + ")";
    const render = (state) => {
      writeState(state);
      const list = INDEX.items.filter((it) => matches(it, state));
      remember(list);
      const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
      state.page = Math.min(state.page, pages);
      const shown = list.slice((state.page - 1) * PAGE_SIZE, state.page * PAGE_SIZE);
      document.getElementById("count").textContent =
        list.length + " of " + INDEX.items.length + " items" + (pages > 1 ? ", page " + state.page + " of " + pages : "");
      document.getElementById("grid").replaceChildren(...shown.map(card));
      const pager = document.getElementById("pager");
      pager.replaceChildren();
      if (pages > 1) {
        for (let p = 1; p <= pages; p++) {
          if (pages > 12 && p > 2 && p < pages - 1 && Math.abs(p - state.page) > 2) continue;
          const b = el("button", { type: "button", text: String(p) });
          if (p === state.page) b.setAttribute("aria-current", "page");
          b.addEventListener("click", () => { state.page = p; render(state); window.scrollTo(0, 0); });
          pager.append(b);
        }
      }
      document.getElementById("compare-link").href = "compare.html" + location.hash;
    };
    controls(render);
    const figs = document.getElementById("figures-link");
    figs.textContent = "Figures (" + INDEX.figures.length + ")";
  }

  function figuresPage() {
    const main = document.getElementById("figures");
    if (!INDEX.figures.length) main.append(el("p", { text: "no figures in this folder" }));
    for (const f of INDEX.figures) {
      const fields = Object.entries(f.fields).map(([k, v]) => k + ": " + v).join(", ");
      main.append(el("section", { class: "figure" }, el("h2", { text: f.kind + " — " + f.folder }),
        el("p", {}, fields + " ", el("a", { href: f.json, text: "record" })),
        ...f.images.map((src) => el("img", { src, alt: f.kind, loading: "lazy", class: "wide" }))));
    }
  }

  function svgLoss(loss) {
    const NS = "http://www.w3.org/2000/svg";
    const layers = Object.keys(loss);
    const box = el("div");
    if (!layers.length) { box.textContent = "no loss curve in the record"; return box; }
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "loss");
    svg.setAttribute("viewBox", "0 0 720 220");
    svg.setAttribute("preserveAspectRatio", "none");
    const colours = ["#2456a6", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#2c3e50"];
    const legend = el("div", { class: "legend" });
    layers.forEach((layer, k) => {
      const ys = loss[layer].map((v) => Math.log10(Math.max(v, 1e-12)));
      const lo = Math.min(...ys), hi = Math.max(...ys);
      const pts = ys.map((y, i) => (i / Math.max(1, ys.length - 1)) * 710 + 5 + "," +
        (hi > lo ? 210 - ((y - lo) / (hi - lo)) * 200 : 110)).join(" ");
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute("points", pts);
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", colours[k % colours.length]);
      line.setAttribute("stroke-width", "1.5");
      svg.append(line);
      legend.append(el("span", { style: "color:" + colours[k % colours.length], text: "— " + layer }));
    });
    box.append(svg, legend, el("p", { class: "m", text: "log scale, each layer scaled to its own range" }));
    return box;
  }

  function kvRows(table, pairs) {
    table.replaceChildren(...pairs.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) }))));
  }

  function itemPage() {
    const id = new URLSearchParams(location.search).get("id");
    const item = INDEX.items.find((it) => it.id === id);
    if (!item) { document.getElementById("title").textContent = "no item " + id; return; }
    document.title = "vital gallery: " + item.title;
    document.getElementById("title").textContent = item.title + " — " + item.method + ", seed " + item.seed;
    let order;
    try { order = JSON.parse(sessionStorage.getItem("vital-order") || "null"); } catch (e) { order = null; }
    if (!order || !order.includes(id)) order = INDEX.items.map((it) => it.id);
    const at = order.indexOf(id);
    const go = (d) => { const next = order[at + d]; if (next) location.href = "item.html?id=" + encodeURIComponent(next); };
    const prev = document.getElementById("prev"), next = document.getElementById("next");
    prev.href = at > 0 ? "item.html?id=" + encodeURIComponent(order[at - 1]) : "#";
    next.href = at < order.length - 1 ? "item.html?id=" + encodeURIComponent(order[at + 1]) : "#";
    document.addEventListener("keydown", (e) => {
      if (e.target instanceof HTMLInputElement && e.target.type !== "checkbox") return;
      if (e.key === "ArrowLeft") go(-1);
      if (e.key === "ArrowRight") go(1);
    });
    const img = document.getElementById("image");
    const frame = document.getElementById("frame");
    const toggle = document.getElementById("transparency");
    if (item.image) { img.src = item.image; img.alt = item.title; } else { frame.textContent = item.status + (item.error ? ": " + item.error : ""); }
    toggle.disabled = !item.rgba;
    toggle.addEventListener("change", () => {
      img.src = toggle.checked ? item.rgba : item.image;
      frame.classList.toggle("checker", toggle.checked);
    });
    const siblings = INDEX.items.filter((it) => it.key === item.key && it.model === item.model && it.id !== item.id);
    document.getElementById("siblings").replaceChildren(...siblings.map(card));
    if (!siblings.length) document.getElementById("siblings").textContent = "only this one";
    if (!item.image) return;
    const script = el("script", { src: "data/items/" + encodeURIComponent(item.id) + ".js" });
    script.addEventListener("load", () => {
      const d = window.VITAL_ITEM;
      kvRows(document.getElementById("fields"), Object.entries(d.fields));
      document.getElementById("json").href = d.json;
      kvRows(document.getElementById("top5"), d.top5.map((t) => [t.name + " (" + t.index + ")", Number(t.p).toFixed(3)]));
      if (Object.keys(d.metrics).length) {
        document.getElementById("metrics-box").hidden = false;
        kvRows(document.getElementById("metrics"), Object.entries(d.metrics));
      }
      const refs = document.getElementById("refs");
      refs.replaceChildren(...d.refs.map((r) => el("figure", { class: "card" },
        el("img", { src: r.thumb, alt: r.name, loading: "lazy" }),
        el("figcaption", { class: "m", text: r.name + (r.score !== null ? " · " + r.score : "") }))));
      if (!d.refs.length) {
        refs.append(el("p", { class: "note", text: d.fields.references ?
          "the reference images (" + d.fields.references + ") are not files the gallery can read" :
          item.method + " uses no references" }));
      }
      document.getElementById("loss").replaceChildren(svgLoss(d.loss));
    });
    document.body.append(script);
  }

  function comparePage() {
    controls((state) => {
      writeState(state);
      const list = INDEX.items.filter((it) => matches(it, state) && it.thumb);
      const present = new Set(list.map((it) => it.method));
      const methods = (INDEX.methods || [...present]).filter((m) => present.has(m));
      const targets = new Map();
      for (const it of list) {
        const key = it.model + " " + it.key;
        if (!targets.has(key)) targets.set(key, { title: it.title, model: it.model, cells: {} });
        const cell = targets.get(key).cells;
        (cell[it.method] = cell[it.method] || []).push(it);
      }
      const rows = [...targets.values()].slice(0, 300);
      document.getElementById("count").textContent = targets.size + " targets × " + methods.length + " methods" +
        (targets.size > 300 ? " (first 300 shown: narrow the selection)" : "");
      const head = el("tr", {}, el("th", { text: "target" }), ...methods.map((m) => el("th", { text: m })));
      const body = rows.map((row) => el("tr", {}, el("th", { text: row.title + " (" + row.model + ")" }),
        ...methods.map((m) => el("td", {}, ...(row.cells[m] || []).map((it) =>
          el("a", { href: "item.html?id=" + encodeURIComponent(it.id), title: "seed " + it.seed },
            el("img", { src: it.thumb, alt: it.title + " " + m, loading: "lazy" })))))));
      document.getElementById("compare").replaceChildren(head, ...body);
    });
  }

  function issuesPage() {
    kvRows(document.getElementById("issues"), INDEX.issues.map((i) => [i.file, i.problem]));
    if (!INDEX.issues.length) document.getElementById("issues").textContent = "none";
    const failed = INDEX.items.filter((it) => it.status === "failed");
    kvRows(document.getElementById("failed"), failed.map((it) => [it.title + " (" + it.method + ")", it.error || "failed"]));
    if (!failed.length) document.getElementById("failed").textContent = "none";
  }

  const pages = { index: indexPage, item: itemPage, compare: comparePage, issues: issuesPage, figures: figuresPage };
  pages[document.body.dataset.page]();
})();
