// The viewer page: loads one study, lays out viewports, wires the toolbar, keyboard,
// series panel, cine, tag browser and film sheet.

import { enc, getJSON, instancePath, withBase } from "./api.js";
import { exportFilm } from "./filmsheet.js";
import { applyTexts, bindLangSelect, formatDate, onLangChange, t } from "./i18n.js";
import { ImageLoader } from "./imageloader.js";
import { PRESETS, Viewport } from "./viewport.js";
import { ShareUI } from "./share.js";

const LAYOUTS = { "1x1": 1, "1x2": 2, "2x2": 4 };

class App {
  constructor() {
    this.studyUid = document.body.dataset.study;
    this.study = null;
    this.loader = new ImageLoader();
    this.loader.onArrival((url) => {
      for (const vp of this.visible()) vp.arrived(url);
    });
    this.grid = document.getElementById("grid");
    this.viewports = [];
    this.active = null;
    this.layout = "1x1";
    this.tool = "wl";
    this.metas = new Map(); // sop -> meta
    this.metaRequests = new Map(); // sop -> Promise
    this.prefetchLists = new Map(); // viewport -> urls
    this.cine = null;
    this.film = [];
    this.overlay = true;
  }

  async start() {
    this.bindToolbar();
    this.bindKeys();
    try {
      const embedded = document.getElementById("study-data");
      this.study = embedded ? JSON.parse(embedded.textContent) : await getJSON(`/api/studies/${enc(this.studyUid)}`);
    } catch (err) {
      this.grid.textContent = err.status === 404 ? t("notFound") : `${t("error")}: ${err.message}`;
      return;
    }
    this.renderHeader();
    this.renderSeriesPanel();
    this.setLayout(matchMedia("(max-width: 700px)").matches ? "1x1" : this.layout);
    this.fillPresets();
    document.body.classList.add("ready");
    // After the first images are asked for: the links/notes requests must not delay them.
    this.share = new ShareUI(this);
  }

  // ------------------------------------------------------------------ data

  meta(seriesUid, sop) {
    if (this.metas.has(sop)) return Promise.resolve(this.metas.get(sop));
    if (!this.metaRequests.has(sop)) {
      const p = getJSON(`/api/${instancePath(this.studyUid, seriesUid, sop)}/meta`)
        .then((m) => {
          this.metas.set(sop, m);
          return m;
        })
        .finally(() => this.metaRequests.delete(sop));
      this.metaRequests.set(sop, p);
    }
    return this.metaRequests.get(sop);
  }

  metaNow(_seriesUid, sop) {
    return this.metas.get(sop);
  }

  /** One prefetch queue for all viewports: the active one's neighbours first. */
  prefetch(vp, urls) {
    this.prefetchLists.set(vp, urls);
    const order = [this.active, ...this.visible().filter((v) => v !== this.active)];
    const all = [];
    for (const v of order) all.push(...(this.prefetchLists.get(v) || []));
    this.loader.prefetch(all);
  }

  seriesByUid(uid) {
    return this.study.series.find((s) => s.series_uid === uid);
  }

  imageSeries() {
    return this.study.series.filter((s) => s.images > 0);
  }

  // ------------------------------------------------------------------ layout

  visible() {
    return this.viewports.slice(0, LAYOUTS[this.layout]);
  }

  setLayout(name) {
    if (!LAYOUTS[name]) return;
    this.layout = name;
    const n = LAYOUTS[name];
    while (this.viewports.length < n) {
      const vp = new Viewport(this, this.viewports.length);
      this.viewports.push(vp);
      this.grid.append(vp.el);
    }
    this.grid.className = `grid layout-${name}`;
    const images = this.imageSeries();
    this.viewports.forEach((vp, i) => {
      vp.el.hidden = i >= n;
    });
    for (const vp of this.visible()) vp.resize(); // sized first: large images are fetched to fit
    this.visible().forEach((vp, i) => {
      if (!vp.series && images.length) vp.setSeries(images[Math.min(i, images.length - 1)]);
    });
    for (const b of document.querySelectorAll("[data-layout]")) {
      b.setAttribute("aria-pressed", String(b.dataset.layout === name));
    }
    if (!this.active || this.active.el.hidden) this.activate(this.viewports[0]);
    for (const vp of this.visible()) vp.resize();
  }

  activate(vp) {
    if (this.active === vp) return;
    this.active = vp;
    for (const v of this.viewports) v.el.classList.toggle("active", v === vp);
    this.highlightSeries();
    this.refreshTags();
  }

  loadSeries(uid, vp = this.active) {
    const s = this.seriesByUid(uid);
    if (s && vp) vp.setSeries(s);
  }

  onSeriesShown() {
    this.highlightSeries();
  }

  onSliceShown(vp) {
    if (!this.firstShown) {
      this.firstShown = true;
      for (const img of document.querySelectorAll(".series-item img[data-src]")) img.src = img.dataset.src;
    }
    if (vp === this.active) {
      clearTimeout(this._tagTimer);
      this._tagTimer = setTimeout(() => this.refreshTags(), 250);
    }
  }

  // ------------------------------------------------------------------ rendering of panels

  renderHeader() {
    const st = this.study;
    const el = document.getElementById("patient");
    el.textContent = [st.patient_name_display, st.patient_id, formatDate(st.study_date), st.description]
      .filter(Boolean).join(" · ");
    document.title = `${st.patient_id || "mini-PACS"} · ${st.description || ""}`;
  }

  renderSeriesPanel() {
    const panel = document.getElementById("series");
    panel.replaceChildren();
    for (const s of this.study.series) {
      const item = document.createElement("button");
      item.className = "series-item";
      item.dataset.series = s.series_uid;
      item.disabled = s.images === 0;
      item.draggable = s.images > 0;
      const img = document.createElement("img");
      img.alt = "";
      img.loading = "lazy";
      img.decoding = "async";
      if (s.images > 0) {
        // Thumbnails wait for the first image: it must not queue behind them.
        img.dataset.src = withBase(`/dicomweb/studies/${enc(this.studyUid)}/series/${enc(s.series_uid)}/thumbnail`);
        img.addEventListener("error", () => img.classList.add("broken"));
        if (this.firstShown) img.src = img.dataset.src;
      } else img.classList.add("broken");
      const label = document.createElement("span");
      label.className = "s-label";
      label.textContent = `${s.number ?? "—"} · ${s.modality || "?"}`;
      const desc = document.createElement("span");
      desc.className = "s-desc";
      desc.textContent = s.description || "";
      const count = document.createElement("span");
      count.className = "s-count";
      const frames = s.instances.reduce((a, i) => a + (i.rows ? Math.max(1, i.frames) : 0), 0);
      count.textContent = `${frames} ${t("images")}`;
      item.append(img, label, desc, count);
      item.addEventListener("click", () => this.loadSeries(s.series_uid));
      item.addEventListener("dragstart", (e) => {
        e.dataTransfer.setData("application/x-series", s.series_uid);
        e.dataTransfer.effectAllowed = "copy";
      });
      panel.append(item);
    }
    this.highlightSeries();
  }

  highlightSeries() {
    const shown = new Set(this.visible().map((v) => v.series?.series_uid));
    for (const el of document.querySelectorAll(".series-item")) {
      el.classList.toggle("shown", shown.has(el.dataset.series));
      el.classList.toggle("current", el.dataset.series === this.active?.series?.series_uid);
    }
  }

  fillPresets() {
    const sel = document.getElementById("presets");
    const vp = this.active;
    sel.replaceChildren();
    const head = new Option(t("presets"), "");
    head.disabled = true;
    head.selected = true;
    sel.append(head);
    sel.append(new Option(`0 · ${t("fileWindow")}`, "file"));
    PRESETS.forEach((p, i) => {
      sel.append(new Option(`${i + 1} · ${t(p.key)} ${p.center}/${p.width}`, String(i)));
    });
    const m = vp?.slice ? this.metaNow(vp.series.series_uid, vp.slice.sop) : null;
    (m?.windows || []).forEach((w, i) => {
      sel.append(new Option(`${t("fileWindow")} ${i + 1}: ${Math.round(w.center)}/${Math.round(w.width)}`, `w${i}`));
    });
  }

  async applyPreset(value) {
    const vp = this.active;
    if (!vp?.slice) return;
    if (value === "file") {
      vp.setWindow(null);
      return;
    }
    if (value.startsWith("w")) {
      const m = await vp.meta();
      const w = m?.windows?.[Number(value.slice(1))];
      if (w) vp.setWindow(w);
      return;
    }
    const p = PRESETS[Number(value)];
    if (p) vp.setWindow({ center: p.center, width: p.width });
  }

  // ------------------------------------------------------------------ toolbar and keys

  setTool(name) {
    this.tool = name;
    for (const b of document.querySelectorAll("[data-tool]")) {
      b.setAttribute("aria-pressed", String(b.dataset.tool === name));
    }
    for (const vp of this.viewports) vp.cancel();
  }

  bindToolbar() {
    for (const b of document.querySelectorAll("[data-layout]")) {
      b.addEventListener("click", () => this.setLayout(b.dataset.layout));
    }
    for (const b of document.querySelectorAll("[data-tool]")) {
      b.addEventListener("click", () => this.setTool(b.dataset.tool));
    }
    for (const b of document.querySelectorAll("[data-action]")) {
      b.addEventListener("click", () => this.action(b.dataset.action));
    }
    const presets = document.getElementById("presets");
    presets.addEventListener("focus", () => this.fillPresets());
    presets.addEventListener("change", () => {
      this.applyPreset(presets.value);
      presets.selectedIndex = 0;
    });
    document.getElementById("fps").addEventListener("change", () => {
      if (this.cine) this.toggleCine(true);
    });
    document.getElementById("tag-filter").addEventListener("input", () => this.renderTags());
    document.getElementById("film-export").addEventListener("click", () => this.exportFilm());
    this.setTool("wl");
  }

  action(name) {
    const vp = this.active;
    if (name === "overlay") {
      this.overlay = !this.overlay;
      document.body.classList.toggle("no-overlay", !this.overlay);
      document.querySelector('[data-action="overlay"]').setAttribute("aria-pressed", String(this.overlay));
    } else if (name === "tags") {
      const panel = document.getElementById("tags");
      panel.hidden = !panel.hidden;
      this.refreshTags();
      for (const v of this.visible()) v.resize();
    } else if (name === "film") {
      const panel = document.getElementById("film");
      panel.hidden = !panel.hidden;
      this.renderFilm();
      for (const v of this.visible()) v.resize();
    } else if (this.share?.action(name)) {
      /* share dialog, shared links and consultation notes (share.js) */
    } else if (name === "addFilm") {
      this.addToFilm();
    } else if (name === "cine") {
      this.toggleCine();
    } else if (vp) {
      vp.action(name);
    }
  }

  bindKeys() {
    document.addEventListener("keydown", (e) => {
      const tag = e.target?.tagName;
      if ((tag === "INPUT" && e.target.type !== "range") || tag === "SELECT" || tag === "TEXTAREA") {
        if (e.key === "Escape") e.target.blur();
        return;
      }
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      if (tag === "BUTTON" && (e.key === " " || e.key === "Enter")) return; // the button's own click
      const vp = this.active;
      if (!vp) return;
      const k = e.key;
      let handled = true;
      if (k === "ArrowDown" || k === "ArrowRight") vp.scroll(1);
      else if (k === "ArrowUp" || k === "ArrowLeft") vp.scroll(-1);
      else if (k === "PageDown") vp.scroll(10);
      else if (k === "PageUp") vp.scroll(-10);
      else if (k === "Home") vp.show(0);
      else if (k === "End") vp.show(vp.slices.length - 1);
      else if (k >= "1" && k <= "8") this.applyPreset(String(Number(k) - 1));
      else if (k === "0") this.applyPreset("file");
      else if (k === "i") vp.action("invert");
      else if (k === "r") vp.action("rotate");
      else if (k === "h") vp.action("flipH");
      else if (k === "v") vp.action("flipV");
      else if (k === "f") vp.action("fit");
      else if (k === " ") this.toggleCine();
      else if (k === "o") this.action("overlay");
      else if (k === "t") this.action("tags");
      else if (k === "Escape") vp.cancel();
      else if (k === "Delete" || k === "Backspace") vp.removeLast();
      else handled = false;
      if (handled) e.preventDefault();
    });
  }

  // ------------------------------------------------------------------ cine

  toggleCine(restart = false) {
    const btn = document.getElementById("cine");
    if (this.cine && !restart) {
      clearInterval(this.cine);
      this.cine = null;
      btn.textContent = "▶";
      btn.setAttribute("aria-pressed", "false");
      return;
    }
    clearInterval(this.cine);
    const fps = Number(document.getElementById("fps").value) || 10;
    this.cine = setInterval(() => {
      const vp = this.active;
      if (!vp?.slices.length) return;
      vp.direction = 1;
      vp.show((vp.index + 1) % vp.slices.length);
    }, 1000 / fps);
    btn.textContent = "❙❙";
    btn.setAttribute("aria-pressed", "true");
  }

  // ------------------------------------------------------------------ tag browser

  async refreshTags() {
    const panel = document.getElementById("tags");
    const vp = this.active;
    if (panel.hidden || !vp?.slice) return;
    const sop = vp.slice.sop;
    if (this._tagsFor === sop) return;
    this._tagsFor = sop;
    try {
      const data = await getJSON(`/api/${instancePath(this.studyUid, vp.series.series_uid, sop)}/tags`);
      if (this._tagsFor !== sop) return;
      this.tags = data.elements;
    } catch (err) {
      this.tags = [{ tag: "", keyword: t("error"), vr: "", value: err.message }];
    }
    this.renderTags();
  }

  renderTags() {
    const list = document.getElementById("tag-list");
    const q = document.getElementById("tag-filter").value.trim().toLowerCase();
    const rows = [];
    const walk = (elements, depth) => {
      for (const e of elements) {
        const text = `${e.tag} ${e.keyword} ${e.name} ${e.value}`.toLowerCase();
        if (!q || text.includes(q)) rows.push({ ...e, depth });
        (e.items || []).forEach((item, i) => {
          if (!q) rows.push({ tag: "", keyword: `— item ${i + 1}`, vr: "", value: "", depth: depth + 1 });
          walk(item, depth + 1);
        });
      }
    };
    walk(this.tags || [], 0);
    const table = document.createElement("table");
    table.className = "tag-table";
    for (const r of rows.slice(0, 3000)) {
      const tr = document.createElement("tr");
      if (r.elided) tr.className = "elided";
      for (const [cls, v] of [["tg", r.tag], ["kw", r.keyword || r.name], ["vr", r.vr], ["val", r.value]]) {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = v ?? "";
        if (cls === "kw") td.style.paddingLeft = `${0.3 + r.depth}em`;
        tr.append(td);
      }
      table.append(tr);
    }
    list.replaceChildren(table);
  }

  // ------------------------------------------------------------------ film sheet

  addToFilm() {
    const vp = this.active;
    if (!vp?.slice) return;
    const m = this.metaNow(vp.series.series_uid, vp.slice.sop);
    this.film.push({
      series: vp.series, slice: vp.slice, index: vp.index, count: vp.slices.length,
      window: vp.window || m?.window || null, explicitWindow: vp.window, invert: vp.view.invert,
      color: !!m?.color,
    });
    const panel = document.getElementById("film");
    panel.hidden = false;
    this.renderFilm();
    for (const v of this.visible()) v.resize();
  }

  filmItems() {
    if (this.film.length) return this.film;
    return this.visible().filter((v) => v.slice).map((v) => {
      const m = this.metaNow(v.series.series_uid, v.slice.sop);
      return { series: v.series, slice: v.slice, index: v.index, count: v.slices.length,
        window: v.window || m?.window || null, explicitWindow: v.window, invert: v.view.invert,
        color: !!m?.color };
    });
  }

  renderFilm() {
    document.getElementById("film-info").textContent =
      this.film.length ? t("filmCount", this.film.length) : t("filmEmpty");
    const list = document.getElementById("film-list");
    list.replaceChildren(...this.film.map((f, i) => {
      const row = document.createElement("div");
      row.className = "film-item";
      row.textContent = `${t("seLabel")} ${f.series.number ?? "—"} · ${t("imLabel")} ${f.index + 1}/${f.count}`;
      const rm = document.createElement("button");
      rm.textContent = "×";
      rm.addEventListener("click", () => {
        this.film.splice(i, 1);
        this.renderFilm();
      });
      row.append(rm);
      return row;
    }));
  }

  async exportFilm() {
    const btn = document.getElementById("film-export");
    btn.disabled = true;
    try {
      await exportFilm(this, this.filmItems());
    } catch (err) {
      document.getElementById("film-info").textContent = `${t("error")}: ${err.message}`;
    } finally {
      btn.disabled = false;
    }
  }
}

const app = new App();
bindLangSelect(document.getElementById("lang"));
onLangChange(() => {
  if (!app.study) return;
  app.renderHeader();
  app.renderSeriesPanel();
  app.fillPresets();
  app.renderFilm();
  app.share?.refreshTexts();
  for (const vp of app.viewports) {
    vp.updateOverlay();
    vp.draw();
  }
});
applyTexts();
app.start();
// For tests and scripted benchmarks: the running viewer.
window.pacsViewer = app;
