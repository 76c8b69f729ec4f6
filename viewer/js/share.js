// Shared study links (remote consultation, "hội chẩn từ xa").
//
// Signed in (a role that may share): the toolbar's ↗ opens a dialog that creates an
// expiring, revocable link (PIN, de-identification, download, notes, a series subset, a
// label) and shows its URL and QR code; ✎ opens a panel with the study's links (revoke) and
// the consultation notes that came back through them.
//
// On the link itself (/s/<token>, no account): a banner with the expiry, the ZIP download
// when allowed, and a notes panel (name + opinion) when notes are allowed. Everything the
// viewer fetches goes under the link's prefix (api.js BASE).

import { BASE, enc, getJSON } from "./api.js";
import { formatDateTime, t } from "./i18n.js";

const AUTHOR_KEY = "pacs.noteAuthor";
const NOTES_POLL_MS = 30000;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

/** The link's description embedded in the page (null when signed in). */
export function shareInfo() {
  const node = document.getElementById("share-info");
  if (!node) return null;
  try {
    return JSON.parse(node.textContent) || null;
  } catch {
    return null;
  }
}

/** The server's QR code (SVG text) as an image URL: an <img> never runs what an SVG holds. */
function svgDataUrl(svg) {
  // Markup meant for inlining in HTML may lack what a standalone SVG file needs: the SVG
  // namespace (else the image does not load) and a viewBox (else it does not scale).
  const text = String(svg || "").replace(/<svg\b[^>]*>/, (tag) => {
    let open = tag;
    if (!/\sxmlns=/.test(open)) open = open.replace("<svg", '<svg xmlns="http://www.w3.org/2000/svg"');
    const w = /\swidth="([\d.]+)"/.exec(open);
    const h = /\sheight="([\d.]+)"/.exec(open);
    if (!/\sviewBox=/.test(open) && w && h) open = open.replace("<svg", `<svg viewBox="0 0 ${w[1]} ${h[1]}"`);
    return open;
  });
  return `data:image/svg+xml;charset=utf-8,${encodeURIComponent(text)}`;
}

async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Plain http on a LAN is not a secure context: no Clipboard API there.
    if (!input) return false;
    input.focus();
    input.select();
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
}

function renderNotes(list, notes, { showLabel }) {
  if (!notes.length) {
    list.replaceChildren(el("p", "empty", t("noNotes")));
    return;
  }
  list.replaceChildren(...notes.map((n) => {
    const item = el("article", "note");
    const head = el("div", "note-head");
    head.append(el("strong", "note-author", n.author || "—"));
    if (showLabel && n.label) head.append(el("span", "note-label", n.label));
    head.append(el("time", "note-time", formatDateTime(n.created)));
    if (n.created) head.lastChild.dateTime = String(n.created);
    item.append(head, el("p", "note-text", n.text || ""));
    return item;
  }));
}

export class ShareUI {
  constructor(app) {
    this.app = app;
    this.info = shareInfo();
    this.studyUid = app.studyUid;
    this.timer = null;
    if (this.info) this.initRecipient();
    else this.initOwner();
  }

  /** Toolbar actions handled here (true when handled). */
  action(name) {
    if (name === "share" && this.dialog) {
      this.openDialog();
      return true;
    }
    if (name === "shares" && this.panel) {
      this.togglePanel();
      return true;
    }
    if (name === "notes" && this.panel && this.info) {
      this.togglePanel();
      return true;
    }
    return false;
  }

  refreshTexts() {
    if (this.info) this.renderBanner();
    if (this.dialog) this.fillDays();
    if (this.panel && !this.panel.hidden) {
      if (this.shares) this.renderShares();
      if (this.notes) renderNotes(this.noteList, this.notes, { showLabel: !this.info });
    }
  }

  togglePanel(open = this.panel.hidden) {
    this.panel.hidden = !open;
    for (const v of this.app.visible()) v.resize();
    clearInterval(this.timer);
    this.timer = null;
    if (!open) return;
    this.loadPanel();
    this.timer = setInterval(() => {
      if (!document.hidden) this.loadNotes();
    }, NOTES_POLL_MS);
  }

  loadPanel() {
    if (!this.info) this.loadShares();
    this.loadNotes();
  }

  // ------------------------------------------------------------------ notes (both sides)

  notesUrl() {
    return this.info ? `${BASE}/notes` : `/api/studies/${enc(this.studyUid)}/notes`;
  }

  async loadNotes() {
    if (!this.noteList) return;
    try {
      const data = await getJSON(this.notesUrl());
      this.notes = data?.notes || [];
      renderNotes(this.noteList, this.notes, { showLabel: !this.info });
      this.setBadge(this.notes.length);
    } catch (err) {
      this.noteList.replaceChildren(el("p", "form-error", `${t("error")}: ${err.message}`));
    }
  }

  setBadge(n) {
    const badge = document.getElementById("notes-badge");
    if (!badge) return;
    badge.hidden = !n;
    badge.textContent = n > 99 ? "99+" : String(n);
  }

  // ------------------------------------------------------------------ recipient (/s/<token>)

  initRecipient() {
    document.body.classList.add("share-mode");
    // The page's frame links to the worklist and to signing out: neither is for a guest.
    for (const node of document.querySelectorAll(".topbar .brand, .topbar .back, .topbar .logout, .topbar .who")) {
      node.remove();
    }
    this.renderBanner();
    this.panel = document.getElementById("notes-panel");
    this.noteList = document.getElementById("note-list");
    const form = document.getElementById("note-form");
    if (!form) return;
    const author = document.getElementById("note-author");
    try {
      author.value = localStorage.getItem(AUTHOR_KEY) || "";
    } catch {
      /* private mode */
    }
    form.addEventListener("keydown", (e) => e.stopPropagation());
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.sendNote(form);
    });
  }

  renderBanner() {
    const text = document.getElementById("share-banner-text");
    if (!text) return;
    const parts = [t("sharedStudy")];
    if (this.info.expires) parts.push(t("expiresOn", formatDateTime(this.info.expires)));
    if (this.info.deidentified) parts.push(t("deidentified"));
    text.textContent = parts.join(" · ");
  }

  async sendNote(form) {
    const error = document.getElementById("note-error");
    const author = form.elements.author.value.trim();
    const text = form.elements.text.value.trim();
    error.hidden = true;
    if (!author || !text) return;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await getJSON(`${BASE}/notes`, { method: "POST", body: { author, text } });
      try {
        localStorage.setItem(AUTHOR_KEY, author);
      } catch {
        /* private mode */
      }
      form.elements.text.value = "";
      await this.loadNotes();
    } catch (err) {
      error.textContent = `${t("error")}: ${err.message}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ owner (signed in)

  initOwner() {
    this.dialog = document.getElementById("share-dialog");
    this.panel = document.getElementById("shares-panel");
    this.noteList = document.getElementById("note-list");
    this.shareList = document.getElementById("share-list");
    if (this.panel) {
      document.getElementById("notes-refresh")?.addEventListener("click", () => this.loadPanel());
      this.loadNotes(); // the ✎ badge: how many notes came back
    }
    if (!this.dialog) return;
    const form = document.getElementById("share-form");
    this.form = form;
    this.dialog.addEventListener("keydown", (e) => e.stopPropagation()); // not the viewer's keys
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.createShare();
    });
    document.getElementById("share-cancel").addEventListener("click", () => this.dialog.close());
    document.getElementById("share-done").addEventListener("click", () => this.dialog.close());
    document.getElementById("share-copy").addEventListener("click", async () => {
      const input = document.getElementById("share-url");
      const btn = document.getElementById("share-copy");
      if (await copyText(input.value, input)) {
        btn.textContent = t("copied");
        setTimeout(() => (btn.textContent = t("copy")), 2000);
      }
    });
    document.getElementById("share-print").addEventListener("click", () => this.printQr());
    const send = document.getElementById("share-send");
    if (navigator.share) {
      // Phones: straight into a messaging app.
      send.hidden = false;
      send.addEventListener("click", () => {
        const r = this.lastResult;
        if (r) navigator.share({ title: t("sharedStudy"), text: r.info, url: r.url }).catch(() => {});
      });
    }
    const all = document.getElementById("share-all-series");
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll("#share-series-list input")) box.checked = all.checked;
    });
    this.fillDays();
  }

  fillDays() {
    const sel = this.dialog?.querySelector("select[name=days]");
    if (!sel) return;
    for (const o of sel.options) o.textContent = t("daysN", Number(o.value));
  }

  fillSeries() {
    const list = document.getElementById("share-series-list");
    const all = document.getElementById("share-all-series");
    all.checked = true;
    list.replaceChildren(...this.app.study.series.map((s) => {
      const label = el("label", "check");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = s.series_uid;
      box.checked = true;
      box.addEventListener("change", () => {
        const boxes = [...list.querySelectorAll("input")];
        all.checked = boxes.every((b) => b.checked);
      });
      label.append(box, el("span", "", ` ${s.number ?? "—"} · ${s.modality || "?"} ${s.description || ""}`.trimEnd()));
      return label;
    }));
  }

  openDialog() {
    if (!this.dialog) return;
    this.form.reset();
    this.fillDays();
    this.fillSeries();
    this.form.hidden = false;
    document.getElementById("share-result").hidden = true;
    document.getElementById("share-error").hidden = true;
    document.getElementById("share-create").disabled = false;
    if (!this.dialog.open) this.dialog.showModal();
    this.form.elements.label.focus();
  }

  async createShare() {
    const f = this.form.elements;
    const error = document.getElementById("share-error");
    error.hidden = true;
    const boxes = [...document.querySelectorAll("#share-series-list input")];
    const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
    if (!chosen.length) {
      error.textContent = t("shareSeries");
      error.hidden = false;
      return;
    }
    const body = {
      label: f.label.value.trim(),
      days: Number(f.days.value) || 7,
      pin: f.pin.value.trim(),
      deidentify: f.deidentify.checked,
      download: f.download.checked,
      notes: f.notes.checked,
      // Every series: [] (the whole study, also series that arrive later); else the subset.
      series: chosen.length === boxes.length ? [] : chosen,
    };
    const button = document.getElementById("share-create");
    button.disabled = true;
    try {
      const res = await getJSON(`/api/studies/${enc(this.studyUid)}/shares`, { method: "POST", body });
      this.showResult(res, body);
      if (this.panel && !this.panel.hidden) this.loadShares();
    } catch (err) {
      error.textContent = err.message || t("error");
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  showResult(res, body) {
    const url = new URL(res.url, location.href).href;
    this.form.hidden = true;
    document.getElementById("share-result").hidden = false;
    const input = document.getElementById("share-url");
    input.value = url;
    const info = [body.label, t("expiresOn", formatDateTime(res.expires))];
    if (body.pin) info.push(t("flagPin"));
    if (body.deidentify) info.push(t("flagDeid"));
    document.getElementById("share-result-info").textContent = info.filter(Boolean).join(" · ");
    const qr = document.getElementById("share-qr");
    const save = document.getElementById("share-qr-save");
    if (res.qr_svg) {
      const img = el("img");
      img.alt = "QR";
      img.src = svgDataUrl(res.qr_svg);
      qr.replaceChildren(img);
      save.href = img.src;
      save.hidden = false;
    } else {
      qr.replaceChildren();
      save.hidden = true;
    }
    this.lastResult = { url, info: document.getElementById("share-result-info").textContent, qr: res.qr_svg };
    document.getElementById("share-copy").focus();
  }

  /** Print the QR code, the URL and the label on a page of their own. */
  printQr() {
    const r = this.lastResult;
    if (!r) return;
    const frame = document.createElement("iframe");
    frame.style.cssText = "position:fixed;width:0;height:0;border:0;right:0;bottom:0";
    document.body.append(frame);
    const doc = frame.contentDocument;
    doc.open();
    doc.write("<!doctype html><meta charset=utf-8><title>mini-PACS</title>"
      + "<style>body{font-family:sans-serif;text-align:center;margin:2cm}img{width:7cm;height:7cm}"
      + "p{word-break:break-all}</style><body></body>");
    doc.close();
    const h = doc.createElement("h2");
    h.textContent = t("sharedStudy");
    const img = doc.createElement("img");
    img.src = svgDataUrl(r.qr || "");
    const p1 = doc.createElement("p");
    p1.textContent = r.url;
    const p2 = doc.createElement("p");
    p2.textContent = r.info;
    doc.body.append(h, img, p1, p2);
    const go = () => {
      frame.contentWindow.focus();
      frame.contentWindow.print();
      setTimeout(() => frame.remove(), 1000);
    };
    if (img.complete) go();
    else img.addEventListener("load", go, { once: true });
  }

  async loadShares() {
    if (!this.shareList) return;
    try {
      const data = await getJSON(`/api/studies/${enc(this.studyUid)}/shares`);
      this.shares = data?.shares || [];
      this.renderShares();
    } catch (err) {
      this.shareList.replaceChildren(el("p", "form-error", `${t("error")}: ${err.message}`));
    }
  }

  renderShares() {
    const list = this.shareList;
    if (!this.shares.length) {
      list.replaceChildren(el("p", "empty", t("noShares")));
      return;
    }
    const states = { active: "stActive", expired: "stExpired", revoked: "stRevoked" };
    list.replaceChildren(...this.shares.map((s) => {
      const item = el("article", `share-item state-${s.state || "active"}`);
      item.dataset.id = s.id;
      const head = el("div", "share-head");
      head.append(el("strong", "share-label", s.label || "—"),
        el("span", "share-state", t(states[s.state] || s.state || "stActive")));
      const flags = [];
      if (s.pin) flags.push(t("flagPin"));
      if (s.deidentify) flags.push(t("flagDeid"));
      if (s.download) flags.push(t("flagDownload"));
      if (s.notes) flags.push(t("flagNotes"));
      if (s.series?.length) flags.push(t("seriesN", s.series.length));
      const lines = [
        [s.creator, `${t("createdAt")} ${formatDateTime(s.created)}`].filter(Boolean).join(" · "),
        `${t("expiresAt")} ${formatDateTime(s.expires)}`,
        `${t("viewsN", s.views || 0)} · ${t("lastAccess")} ${s.last_access ? formatDateTime(s.last_access) : t("never")}`,
      ];
      item.append(head, ...lines.map((l) => el("div", "share-line", l)));
      if (flags.length) item.append(el("div", "share-flags", flags.join(" · ")));
      if ((s.state || "active") === "active") {
        const btn = el("button", "revoke", t("revoke"));
        btn.type = "button";
        btn.addEventListener("click", () => this.revoke(s, btn));
        item.append(btn);
      }
      return item;
    }));
  }

  /** Two clicks: "Revoke" turns into "Revoke now?" for a few seconds. */
  async revoke(s, btn) {
    if (!btn.classList.contains("confirm")) {
      btn.classList.add("confirm");
      btn.textContent = t("confirmRevoke");
      setTimeout(() => {
        if (btn.isConnected && btn.classList.contains("confirm")) {
          btn.classList.remove("confirm");
          btn.textContent = t("revoke");
        }
      }, 4000);
      return;
    }
    btn.disabled = true;
    try {
      await getJSON(`/api/shares/${enc(s.id)}/revoke`, { method: "POST", body: {} });
    } catch (err) {
      btn.disabled = false;
      btn.textContent = `${t("error")}: ${err.message}`;
      return;
    }
    await this.loadShares();
  }
}
