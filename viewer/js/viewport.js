// One image viewport: a series as a stack of frames, drawn on a canvas with zoom, pan,
// rotation, flips and inversion; window/level, scrolling with neighbour prefetch,
// measurement tools, and the corner overlays. The server renders every pixel; the
// browser only scales and places the image and draws the annotations.

import { getBlob, getJSON, instancePath } from "./api.js";
import { formatDate, formatNumber, formatSex, formatTime, t } from "./i18n.js";
import { anchorOf, drawAnnotations, labelOf } from "./tools.js";

/** Presets from the reading-room spec (center / width, HU); keys 1..8 in this order. */
export const PRESETS = [
  { key: "pBrain", center: 40, width: 80 },
  { key: "pSubdural", center: 75, width: 215 },
  { key: "pStroke", center: 40, width: 40 },
  { key: "pLung", center: -600, width: 1500 },
  { key: "pMediastinum", center: 50, width: 350 },
  { key: "pAbdomen", center: 50, width: 400 },
  { key: "pLiver", center: 60, width: 160 },
  { key: "pBone", center: 400, width: 1800 },
];

/** Images up to this side are fetched at full size; larger ones at the displayed size. */
const FULL_SIZE = 1024;
const PREFETCH_AHEAD = 16;
const PREFETCH_BEHIND = 4;
const DRAG_QUALITY = 60;

function round4(v) {
  return Number(Number(v).toPrecision(5));
}

export class Viewport {
  constructor(app, n) {
    this.app = app;
    this.n = n;
    this.el = document.createElement("div");
    this.el.className = "viewport";
    this.el.tabIndex = 0;
    this.el.dataset.n = n;
    this.el.innerHTML = `
      <canvas></canvas>
      <div class="labels"></div>
      <div class="ov tl"></div><div class="ov tr"></div>
      <div class="ov bl"></div><div class="ov br"></div>
      <div class="hint"></div>
      <input class="slider" type="range" min="0" max="0" value="0" aria-label="slice">
      <ul class="measure-list" aria-live="polite"></ul>`;
    this.canvas = this.el.querySelector("canvas");
    this.ctx = this.canvas.getContext("2d");
    this.labels = this.el.querySelector(".labels");
    this.ov = {
      tl: this.el.querySelector(".tl"), tr: this.el.querySelector(".tr"),
      bl: this.el.querySelector(".bl"), br: this.el.querySelector(".br"),
    };
    this.hint = this.el.querySelector(".hint");
    this.slider = this.el.querySelector(".slider");
    this.list = this.el.querySelector(".measure-list");
    this.series = null;
    this.slices = [];
    this.index = 0;
    this.window = null; // null: the file's own (what the server renders without window=)
    this.anns = new Map(); // slice key -> annotations
    this.pending = null; // an annotation being drawn
    this.pointers = new Map();
    this.bitmap = null;
    this.shown = null; // {url, index, lossy}
    this.seq = 0;
    this.dragging = false;
    this.dragReq = { busy: false, next: null };
    this.direction = 1;
    this.wheelAcc = 0;
    this.counters = { shown: 0, lossy: 0 }; // images put on screen (tests, benchmarks)
    this.resetView();
    this.hint.textContent = t("dropHere");
    this._bind();
    new ResizeObserver(() => this.resize()).observe(this.el);
  }

  resetView() {
    this.view = { scale: null, panX: 0, panY: 0, rot: 0, flipH: false, flipV: false, invert: false };
  }

  // ---------------------------------------------------------------- series and slices

  setSeries(series) {
    this.series = series;
    this.slices = [];
    for (const inst of series.instances) {
      if (!inst.rows) continue; // no pixel data (SR, KO ...)
      for (let f = 1; f <= Math.max(1, inst.frames); f += 1) {
        this.slices.push({ sop: inst.sop_uid, frame: f, number: inst.number, frames: inst.frames,
          rows: inst.rows, columns: inst.columns });
      }
    }
    this.index = 0;
    this.window = null;
    this.resetView();
    this.bitmap = null;
    this.shown = null;
    this.want = null;
    this.urlIndex = new Map();
    this.generation = (this.generation || 0) + 1;
    this.slider.max = Math.max(0, this.slices.length - 1);
    this.slider.value = 0;
    this.slider.hidden = this.slices.length <= 1;
    this.hint.textContent = this.slices.length ? "" : t("noImages");
    this.el.dataset.series = series.series_uid;
    this.app.onSeriesShown(this);
    this.show(0);
  }

  get slice() {
    return this.slices[this.index];
  }

  sliceKey(s = this.slice) {
    return s ? `${s.sop}#${s.frame}` : "";
  }

  meta() {
    return this.slice ? this.app.meta(this.series.series_uid, this.slice.sop) : Promise.resolve(null);
  }

  /** Full size for ordinary images; large radiographs at the displayed size (512 steps). */
  requestSize(s) {
    const side = Math.max(s.rows || 0, s.columns || 0);
    if (side <= FULL_SIZE) return null;
    const shownSide = side * this.scale();
    const want = Math.min(side, Math.max(512, Math.ceil(shownSide / 512) * 512));
    return want >= side ? null : want;
  }

  windowParam(w) {
    if (!w) return null;
    const width = w.function === "LINEAR" || !w.function ? Math.max(1, w.width) : Math.max(1e-3, w.width);
    const fn = w.function && w.function !== "LINEAR" ? `,${w.function}` : "";
    return `${round4(w.center)},${round4(width)}${fn}`;
  }

  url(i, { lossy = false, window = this.window } = {}) {
    const s = this.slices[i];
    const p = new URLSearchParams();
    p.set("accept", lossy ? "image/jpeg" : "image/png");
    if (lossy) p.set("quality", String(DRAG_QUALITY));
    const w = this.windowParam(window);
    if (w) p.set("window", w);
    const size = this.requestSize(s);
    if (size) p.set("viewport", `${size},${size}`);
    const base = `/dicomweb/${instancePath(this.app.study.study_uid, this.series.series_uid, s.sop)}`;
    const url = `${base}/frames/${s.frame}/rendered?${p}`;
    if (!lossy) {
      if (!this.urlIndex || this.urlIndex.size > 4096) this.urlIndex = new Map();
      this.urlIndex.set(url, i);
    }
    return url;
  }

  /** Show slice i. One image request of our own at a time: when the user scrolls faster
   * than images arrive, the newest wanted slice is fetched next and whatever arrives is
   * shown, so the screen keeps moving instead of waiting for every slice passed over. */
  show(i) {
    if (!this.slices.length) {
      this.draw();
      return;
    }
    i = Math.max(0, Math.min(this.slices.length - 1, i));
    if (i !== this.index) this.direction = i > this.index ? 1 : -1;
    this.index = i;
    this.slider.value = i;
    this.want = { url: this.url(i), index: i };
    this.seq += 1; // a late lossy W/L frame must not replace this one
    if (this.counters.shown) this.prefetch(); // the first image goes alone
    this.updateOverlay();
    this.pump();
  }

  async pump() {
    if (this.loading) return;
    this.loading = true;
    try {
      while (this.want && this.want.url !== this.shown?.url && !this.dragging) {
        const { url, index } = this.want;
        const generation = this.generation;
        let bmp;
        try {
          bmp = await this.app.loader.bitmap(url);
        } catch (err) {
          if (this.want?.url === url) {
            this.hint.textContent = `${t("error")}: ${err.message}`;
            break; // the next show() tries again
          }
          continue;
        }
        if (this.dragging) break; // a W/L drag owns the screen until it ends
        if (generation !== this.generation) continue; // another series came meanwhile
        if (this.between(index)) this.display(bmp, url, index);
      }
    } finally {
      this.loading = false;
    }
  }

  /** Whether slice i is on the way from the slice on screen to the wanted one (or is it). */
  between(i) {
    const s = this.shown?.index;
    const w = this.index;
    if (s === undefined || i === w) return true;
    return (s < i && i < w) || (w < i && i < s);
  }

  /** A prefetched image arrived: while the user scrolls faster than images come, show it if
   * it lies between the slice on screen and the wanted one, so the picture keeps moving. */
  async arrived(url) {
    if (this.decoding) {
      this.nextArrival = url; // one decode at a time; the newest arrival waits its turn
      return;
    }
    this.decoding = true;
    try {
      while (url) {
        const i = this.urlIndex?.get(url);
        const usable = i !== undefined && !this.dragging && this.shown && i !== this.index
          && this.between(i) && url === this.url(i); // not an old window or size
        if (usable) {
          const generation = this.generation;
          try {
            const bmp = await this.app.loader.bitmap(url);
            if (generation === this.generation && !this.dragging && this.between(i)) this.display(bmp, url, i);
          } catch {
            /* the wanted slice still comes through pump() */
          }
        }
        url = this.nextArrival;
        this.nextArrival = null;
      }
    } finally {
      this.decoding = false;
    }
  }

  display(bmp, url, index) {
    this.bitmap = bmp;
    this.shown = { url, index, lossy: false };
    this.counters.shown += 1;
    if (!performance.getEntriesByName("pacs-first-image").length) performance.mark("pacs-first-image");
    this.el.dataset.shown = String(index);
    this.hint.textContent = "";
    if (this.counters.shown === 1) this.prefetch();
    this.draw();
    this.updateOverlay();
    this.app.onSliceShown(this);
  }

  scroll(delta) {
    if (this.slices.length) this.show(this.index + delta);
  }

  prefetch() {
    const urls = [];
    const n = this.slices.length;
    const ahead = this.direction >= 0 ? PREFETCH_AHEAD : PREFETCH_BEHIND;
    const behind = this.direction >= 0 ? PREFETCH_BEHIND : PREFETCH_AHEAD;
    for (let k = 1; k <= Math.max(ahead, behind); k += 1) {
      if (k <= ahead && this.index + k < n) urls.push(this.url(this.index + k));
      if (k <= behind && this.index - k >= 0) urls.push(this.url(this.index - k));
    }
    this.app.prefetch(this, urls);
  }

  // ---------------------------------------------------------------- window / level

  async currentWindow() {
    if (this.window) return this.window;
    const m = await this.meta();
    return m?.window || null;
  }

  setWindow(w) {
    this.window = w ? { center: w.center, width: Math.max(1, w.width), function: w.function || "LINEAR" } : null;
    this.show(this.index);
  }

  /** A quick lossy frame while dragging: one request at a time, the newest window wins. */
  dragWindow(w) {
    this.window = w;
    this.updateOverlay();
    if (this.dragReq.busy) {
      this.dragReq.next = w;
      return;
    }
    this.dragReq.busy = true;
    const url = this.url(this.index, { lossy: true, window: w });
    const seq = ++this.seq;
    getBlob(url)
      .then((b) => createImageBitmap(b))
      .then((bmp) => {
        if (seq !== this.seq) return;
        this.bitmap = bmp;
        this.shown = { url, index: this.index, lossy: true };
        this.counters.lossy += 1;
        this.draw();
        this.updateOverlay();
      })
      .catch(() => {})
      .finally(() => {
        this.dragReq.busy = false;
        const next = this.dragReq.next;
        this.dragReq.next = null;
        if (next && this.dragging) this.dragWindow(next);
      });
  }

  // ---------------------------------------------------------------- geometry

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const r = this.el.getBoundingClientRect();
    const w = Math.max(1, Math.round(r.width * dpr));
    const h = Math.max(1, Math.round(r.height * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
      this.afterViewChange(); // a bigger viewport may need more pixels of a large image
    }
  }

  imageSize() {
    const s = this.shownSlice();
    return s ? { w: s.columns || 1, h: s.rows || 1 } : { w: 1, h: 1 };
  }

  fitScale() {
    const { w, h } = this.imageSize();
    const turned = this.view.rot % 180 !== 0;
    const iw = turned ? h : w;
    const ih = turned ? w : h;
    return Math.min(this.canvas.width / iw, this.canvas.height / ih) * 0.96;
  }

  /** Canvas pixels per image pixel. */
  scale() {
    return this.view.scale ?? this.fitScale();
  }

  matrix() {
    const { w, h } = this.imageSize();
    const s = this.scale();
    return new DOMMatrix()
      .translate(this.canvas.width / 2 + this.view.panX, this.canvas.height / 2 + this.view.panY)
      .rotate(this.view.rot)
      .scale(this.view.flipH ? -1 : 1, this.view.flipV ? -1 : 1)
      .scale(s, s)
      .translate(-w / 2, -h / 2);
  }

  toScreen(p) {
    const q = this.matrix().transformPoint(new DOMPoint(p.x, p.y));
    return { x: q.x, y: q.y };
  }

  /** Image coordinates (column, row; continuous) of a client (CSS pixel) position. */
  toImage(clientX, clientY) {
    const r = this.canvas.getBoundingClientRect();
    const dpr = this.canvas.width / Math.max(1, r.width);
    const q = this.matrix().inverse().transformPoint(
      new DOMPoint((clientX - r.left) * dpr, (clientY - r.top) * dpr));
    return { x: q.x, y: q.y };
  }

  /** Client (CSS pixel) position of image coordinates: for tests and the film sheet. */
  toClient(x, y) {
    const r = this.canvas.getBoundingClientRect();
    const dpr = this.canvas.width / Math.max(1, r.width);
    const q = this.toScreen({ x, y });
    return { x: r.left + q.x / dpr, y: r.top + q.y / dpr };
  }

  zoomAt(factor, clientX, clientY) {
    const r = this.canvas.getBoundingClientRect();
    const dpr = this.canvas.width / Math.max(1, r.width);
    const before = this.scale();
    const after = Math.min(64, Math.max(0.02, before * factor));
    // Keep the image point under the pointer where it is.
    const cx = (clientX - r.left) * dpr - this.canvas.width / 2 - this.view.panX;
    const cy = (clientY - r.top) * dpr - this.canvas.height / 2 - this.view.panY;
    const k = after / before;
    this.view.panX -= cx * (k - 1);
    this.view.panY -= cy * (k - 1);
    this.view.scale = after;
    this.afterViewChange();
  }

  afterViewChange() {
    this.draw();
    this.updateOverlay();
    // A large radiograph zoomed in needs more pixels than were fetched.
    if (this.slice && this.shown && !this.shown.lossy && this.shown.url !== this.url(this.index)) {
      clearTimeout(this._refetch);
      this._refetch = setTimeout(() => this.show(this.index), 150);
    }
  }

  action(name) {
    const v = this.view;
    if (name === "fit") Object.assign(v, { scale: null, panX: 0, panY: 0 });
    else if (name === "one") Object.assign(v, { scale: 1, panX: 0, panY: 0 }); // 1 image px = 1 device px
    else if (name === "invert") v.invert = !v.invert;
    else if (name === "rotate") v.rot = (v.rot + 90) % 360;
    else if (name === "flipH") v.flipH = !v.flipH;
    else if (name === "flipV") v.flipV = !v.flipV;
    else if (name === "reset") {
      this.resetView();
      this.window = null;
      this.show(this.index);
      return;
    } else if (name === "clear") {
      this.anns.delete(this.sliceKey());
      this.pending = null;
    }
    this.afterViewChange();
  }

  // ---------------------------------------------------------------- drawing

  draw() {
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (this.bitmap && this.slice) {
      const { w, h } = this.imageSize();
      ctx.setTransform(this.matrix());
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = this.scale() < 1 ? "high" : "low";
      ctx.filter = this.view.invert ? "invert(1)" : "none";
      ctx.drawImage(this.bitmap, 0, 0, w, h);
      ctx.filter = "none";
      ctx.setTransform(1, 0, 0, 1, 0, 0);
    }
    const anns = [...(this.anns.get(this.sliceKey()) || [])];
    if (this.pending) anns.push(this.pending);
    drawAnnotations(ctx, anns, (p) => this.toScreen(p), window.devicePixelRatio || 1);
    this.drawLabels(anns);
  }

  drawLabels(anns) {
    const dpr = this.canvas.width / Math.max(1, this.canvas.getBoundingClientRect().width);
    const s = this.slice;
    const spacing = s ? this.app.metaNow(this.series.series_uid, s.sop)?.spacing || null : null;
    this.labels.replaceChildren();
    this.list.replaceChildren();
    for (const ann of anns) {
      const text = labelOf(ann, spacing);
      const p = this.toScreen(anchorOf(ann));
      const div = document.createElement("div");
      div.className = `ann-label ${ann.type}`;
      div.textContent = text;
      div.style.left = `${p.x / dpr + 8}px`;
      div.style.top = `${p.y / dpr + 4}px`;
      this.labels.append(div);
      const li = document.createElement("li");
      li.dataset.type = ann.type;
      li.textContent = text;
      this.list.append(li);
    }
  }

  updateOverlay() {
    const st = this.app.study;
    const s = this.shownSlice();
    if (!st) return;
    const lines = (el, rows) => {
      el.replaceChildren(...rows.filter(Boolean).map((r) => {
        const d = document.createElement("div");
        d.textContent = r;
        return d;
      }));
    };
    lines(this.ov.tl, [
      st.patient_name_display, st.patient_id,
      [formatDate(st.birth_date), formatSex(st.sex)].filter(Boolean).join(" · "),
    ]);
    lines(this.ov.tr, [
      st.description, `${formatDate(st.study_date)} ${formatTime(st.study_time)}`.trim(), st.accession,
    ]);
    if (!s) {
      lines(this.ov.bl, []);
      lines(this.ov.br, []);
      return;
    }
    const se = this.series;
    const pos = `${t("imLabel")}: ${(this.shown?.index ?? this.index) + 1}/${this.slices.length}`
      + (s.frames > 1 ? ` (${s.frame}/${s.frames})` : "");
    const m = this.app.metaNow(se.series_uid, s.sop);
    const loc = m?.slice_location != null ? `${t("locLabel")}: ${formatNumber(m.slice_location, 1)} mm` : "";
    const thk = m?.slice_thickness != null ? `${t("thkLabel")}: ${formatNumber(m.slice_thickness, 2)} mm` : "";
    lines(this.ov.bl, [
      `${t("seLabel")}: ${se.number ?? "—"} ${se.description || ""}`.trim(), pos,
      s.number != null ? `#${s.number}` : "", [loc, thk].filter(Boolean).join("  "),
    ]);
    const w = this.window || m?.window;
    const wl = m?.color ? "" : w ? `${t("wlLabel")}: ${formatNumber(w.width, 0, false)}/${formatNumber(w.center, 0, false)}` : "";
    const zoom = `${t("zoomLabel")}: ${Math.round(this.scale() * 100 / (window.devicePixelRatio || 1))}%`;
    const cal = m && m.renderable && !m.spacing ? t("uncalibrated") : "";
    lines(this.ov.br, [wl, zoom, cal, this.shown?.lossy ? t("lossy") : ""]);
    this.el.dataset.wl = w ? `${round4(w.center)},${round4(w.width)}` : "";
    if (!m && this.counters.shown) {
      // Ask once the user pauses on a slice, not for every slice scrolled past.
      clearTimeout(this._metaTimer);
      this._metaTimer = setTimeout(async () => {
        const cur = this.shownSlice();
        if (!cur) return;
        await this.app.meta(se.series_uid, cur.sop).catch(() => null);
        this.updateOverlay();
        this.draw(); // measurement labels now know the spacing
      }, this.counters.shown > 1 ? 120 : 0);
    }
  }

  /** The slice whose image is on screen (lags the wanted one while images arrive). */
  shownSlice() {
    return this.slices[this.shown?.index ?? this.index];
  }

  // ---------------------------------------------------------------- input

  _bind() {
    const el = this.el;
    el.addEventListener("pointerdown", (e) => this.onDown(e));
    el.addEventListener("pointermove", (e) => this.onMove(e));
    el.addEventListener("pointerup", (e) => this.onUp(e));
    el.addEventListener("pointercancel", (e) => this.onUp(e));
    el.addEventListener("contextmenu", (e) => e.preventDefault());
    el.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    el.addEventListener("focus", () => this.app.activate(this));
    this.slider.addEventListener("input", () => this.show(Number(this.slider.value)));
    this.slider.addEventListener("pointerdown", (e) => e.stopPropagation());
    el.addEventListener("dragover", (e) => {
      if (e.dataTransfer.types.includes("application/x-series")) {
        e.preventDefault();
        el.classList.add("drop");
      }
    });
    el.addEventListener("dragleave", () => el.classList.remove("drop"));
    el.addEventListener("drop", (e) => {
      el.classList.remove("drop");
      const uid = e.dataTransfer.getData("application/x-series");
      if (uid) {
        e.preventDefault();
        this.app.activate(this);
        this.app.loadSeries(uid, this);
      }
    });
  }

  onWheel(e) {
    e.preventDefault();
    if (e.ctrlKey || e.metaKey) {
      this.zoomAt(Math.exp(-e.deltaY / 300), e.clientX, e.clientY);
      return;
    }
    // One slice per wheel notch; trackpads send many small deltas: add them up.
    const unit = e.deltaMode === 1 ? 3 : e.deltaMode === 2 ? 0.1 : 100;
    this.wheelAcc += e.deltaY / unit;
    const steps = Math.trunc(this.wheelAcc);
    if (steps) {
      this.wheelAcc -= steps;
      this.scroll(Math.sign(steps) * Math.min(Math.abs(steps), 10));
    }
  }

  onDown(e) {
    this.app.activate(this);
    if (!this.slice) return;
    try {
      this.el.setPointerCapture(e.pointerId); // keep getting moves outside the element
    } catch {
      /* a pointer the browser does not track (synthetic events) */
    }
    this.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (this.pointers.size === 2) {
      // Two fingers: pinch zoom and pan; drop whatever one finger started.
      this.gesture = { kind: "pinch", ...this.pinchState() };
      this.pending = null;
      this.endDrag();
      return;
    }
    if (this.pointers.size > 2) return;
    let tool = this.app.tool;
    if (e.button === 1) tool = "pan";
    else if (e.button === 2) tool = "zoom";
    const p = this.toImage(e.clientX, e.clientY);
    this.gesture = { kind: tool, x: e.clientX, y: e.clientY, start: p,
      panX: this.view.panX, panY: this.view.panY, index: this.index };
    if (tool === "wl") {
      this.currentWindow().then((w) => {
        // Colour images have no VOI stage (PS3.4 N.2.2): nothing to drag.
        if (w && this.gesture?.kind === "wl") {
          this.gesture.window = w;
          this.dragging = true;
        }
      });
    } else if (tool === "distance") {
      this.pending = { type: "distance", p0: p, p1: p };
    } else if (tool === "rect" || tool === "ellipse") {
      this.pending = { type: tool, p0: p, p1: p };
    } else if (tool === "angle") {
      if (this.pending?.type === "angle" && this.pending.pts.length === 2) this.pending.pts.push(p);
      else this.pending = { type: "angle", pts: [p, p] };
    } else if (tool === "probe") {
      this.pending = { type: "probe", p, value: null };
      this.probe(this.pending);
    }
    this.draw();
  }

  pinchState() {
    const [a, b] = [...this.pointers.values()];
    return { dist: Math.hypot(a.x - b.x, a.y - b.y) || 1, cx: (a.x + b.x) / 2, cy: (a.y + b.y) / 2 };
  }

  onMove(e) {
    if (!this.pointers.has(e.pointerId)) return;
    this.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    const g = this.gesture;
    if (!g) return;
    if (g.kind === "pinch") {
      if (this.pointers.size < 2) return;
      const now = this.pinchState();
      const dpr = window.devicePixelRatio || 1;
      this.view.panX += (now.cx - g.cx) * dpr;
      this.view.panY += (now.cy - g.cy) * dpr;
      this.zoomAt(now.dist / g.dist, now.cx, now.cy);
      Object.assign(g, now);
      return;
    }
    const dx = e.clientX - g.x;
    const dy = e.clientY - g.y;
    const p = this.toImage(e.clientX, e.clientY);
    if (g.kind === "wl" && g.window) {
      // Horizontal: width, vertical: level; the step grows with the width so both CT
      // (thousands of HU) and 8-bit images feel the same.
      const k = Math.max(0.5, g.window.width / 256);
      this.dragWindow({ center: g.window.center + dy * k, width: Math.max(1, g.window.width + dx * k),
        function: g.window.function || "LINEAR" });
    } else if (g.kind === "pan") {
      const dpr = window.devicePixelRatio || 1;
      this.view.panX = g.panX + dx * dpr;
      this.view.panY = g.panY + dy * dpr;
      this.draw();
    } else if (g.kind === "zoom") {
      this.zoomAt(Math.exp(-(e.clientY - (g.lastY ?? g.y)) / 150), g.x, g.y);
      g.lastY = e.clientY;
    } else if (g.kind === "stack") {
      const step = Math.max(4, this.el.clientHeight / Math.max(20, this.slices.length));
      this.show(g.index + Math.round(dy / step));
    } else if (this.pending) {
      if (this.pending.type === "distance" || this.pending.type === "rect" || this.pending.type === "ellipse") {
        this.pending.p1 = p;
      } else if (this.pending.type === "angle") {
        this.pending.pts[this.pending.pts.length - 1] = p;
      } else if (this.pending.type === "probe") {
        this.pending.p = p;
        this.probe(this.pending);
      }
      this.draw();
    }
  }

  onUp(e) {
    if (!this.pointers.has(e.pointerId)) return;
    this.pointers.delete(e.pointerId);
    const g = this.gesture;
    if (g?.kind === "pinch") {
      if (this.pointers.size === 0) this.gesture = null;
      return;
    }
    this.gesture = null;
    if (g?.kind === "wl") this.endDrag();
    const a = this.pending;
    if (!a) return;
    const small = (p, q) => Math.hypot(p.x - q.x, p.y - q.y) * this.scale() < 3;
    if (a.type === "angle" && a.pts.length === 2) {
      if (small(a.pts[0], a.pts[1])) this.pending = null;
      this.draw();
      return; // the second arm comes with the next press
    }
    if ((a.type === "distance" || a.type === "rect" || a.type === "ellipse") && small(a.p0, a.p1)) {
      this.pending = null;
      this.draw();
      return;
    }
    a.done = true;
    this.pending = null;
    const key = this.sliceKey();
    if (!this.anns.has(key)) this.anns.set(key, []);
    this.anns.get(key).push(a);
    if (a.type === "rect" || a.type === "ellipse") this.roi(a);
    this.draw();
  }

  endDrag() {
    if (!this.dragging) return;
    this.dragging = false;
    this.dragReq.next = null;
    this.show(this.index); // the lossless image at the final window
  }

  cancel() {
    this.pending = null;
    this.draw();
  }

  removeLast() {
    const list = this.anns.get(this.sliceKey());
    if (list?.length) list.pop();
    this.draw();
  }

  async probe(ann) {
    const s = this.slice;
    const x = Math.floor(ann.p.x);
    const y = Math.floor(ann.p.y);
    if (x < 0 || y < 0 || x >= s.columns || y >= s.rows) {
      ann.value = null;
      ann.error = "—";
      this.draw();
      return;
    }
    if (ann._busy) {
      ann._again = true;
      return;
    }
    ann._busy = true;
    try {
      const path = instancePath(this.app.study.study_uid, this.series.series_uid, s.sop);
      const r = await getJSON(`/api/${path}/frames/${s.frame}/pixel?x=${x}&y=${y}`);
      const m = await this.meta();
      ann.value = r.value;
      ann.modality = m?.modality || this.series.modality;
      ann.error = null;
    } catch (err) {
      ann.error = err.message;
    } finally {
      ann._busy = false;
    }
    this.draw();
    if (ann._again) {
      ann._again = false;
      this.probe(ann);
    }
  }

  async roi(ann) {
    const s = this.slice;
    const path = instancePath(this.app.study.study_uid, this.series.series_uid, s.sop);
    const q = new URLSearchParams({ shape: ann.type, x0: ann.p0.x.toFixed(2), y0: ann.p0.y.toFixed(2),
      x1: ann.p1.x.toFixed(2), y1: ann.p1.y.toFixed(2) });
    try {
      ann.stats = await getJSON(`/api/${path}/frames/${s.frame}/roi?${q}`);
    } catch (err) {
      ann.stats = { error: err.message };
    }
    this.draw();
  }
}
