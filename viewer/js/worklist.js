// The worklist: search form, sortable table, paging, and polling for new studies.

import { getJSON, enc } from "./api.js";
import {
  applyTexts, bindLangSelect, formatDate, formatTime, lang, localDA, onLangChange, t,
} from "./i18n.js";

const POLL_MS = 15000;
const PAGE_SIZE = 50;

const form = document.getElementById("search");
const tbody = document.querySelector("#studies tbody");
const countEl = document.getElementById("count");
const freshEl = document.getElementById("fresh");
const pageInfo = document.getElementById("pageinfo");
const prevBtn = document.getElementById("prev");
const nextBtn = document.getElementById("next");

const state = { sort: "date", dir: "desc", page: 1, total: 0, rows: [], seen: null, latest: null };
let inflight = null;

/** `YYYY-MM-DD` (an <input type=date>) from `YYYYMMDD`. */
function isoOf(da) {
  return da ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : "";
}

function readForm() {
  const data = new FormData(form);
  const q = {};
  for (const [k, v] of data.entries()) if (String(v).trim()) q[k] = String(v).trim();
  return q;
}

function writeUrl(q) {
  const params = new URLSearchParams({ ...q, sort: state.sort, dir: state.dir });
  if (state.page > 1) params.set("page", state.page);
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  for (const el of form.elements) {
    if (el.name && params.has(el.name)) el.value = params.get(el.name);
  }
  state.sort = params.get("sort") || "date";
  state.dir = params.get("dir") || "desc";
  state.page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
}

async function load({ quiet = false } = {}) {
  const q = readForm();
  writeUrl(q);
  const params = new URLSearchParams({
    ...q, sort: state.sort, dir: state.dir, page: state.page, page_size: PAGE_SIZE,
  });
  if (inflight) inflight.abort();
  const ctrl = new AbortController();
  inflight = ctrl;
  if (!quiet) document.body.classList.add("busy");
  try {
    const data = await getJSON(`/api/worklist?${params}`, { signal: ctrl.signal });
    const before = state.seen;
    state.total = data.total;
    state.rows = data.rows;
    state.latest = data.latest;
    const uids = new Set(data.rows.map((r) => r.study_uid));
    const fresh = before ? data.rows.filter((r) => !before.has(r.study_uid)) : [];
    state.seen = new Set([...(before || []), ...uids]);
    render(new Set(fresh.map((r) => r.study_uid)));
    freshEl.textContent = fresh.length ? t("newStudies", fresh.length) : "";
  } catch (err) {
    if (err.name === "AbortError") return;
    countEl.textContent = `${t("error")}: ${err.message}`;
  } finally {
    if (inflight === ctrl) inflight = null;
    document.body.classList.remove("busy");
  }
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}

function render(fresh = new Set()) {
  tbody.replaceChildren();
  for (const r of state.rows) {
    const tr = document.createElement("tr");
    tr.dataset.study = r.study_uid;
    tr.tabIndex = 0;
    if (fresh.has(r.study_uid)) tr.classList.add("new");
    const name = cell("", "name");
    const a = document.createElement("a");
    a.href = `/viewer/${enc(r.study_uid)}`;
    a.textContent = r.patient_name_display || "—";
    name.append(a);
    tr.append(
      name, cell(r.patient_id), cell(formatDate(r.birth_date), "opt"),
      cell(`${formatDate(r.study_date)} ${formatTime(r.study_time)}`.trim()),
      cell(r.description, "opt"), cell(r.modalities.join(", ")),
      cell(r.accession, "opt"), cell(r.series, "num opt"), cell(r.images, "num"),
    );
    tr.addEventListener("dblclick", () => location.assign(a.href));
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter") location.assign(a.href);
    });
    tbody.append(tr);
  }
  if (!state.rows.length) {
    const tr = document.createElement("tr");
    const td = cell(t("noStudies"), "empty");
    td.colSpan = 9;
    tr.append(td);
    tbody.append(tr);
  }
  const pages = Math.max(1, Math.ceil(state.total / PAGE_SIZE));
  countEl.textContent = t("found", state.total);
  pageInfo.textContent = t("page", state.page, pages);
  prevBtn.disabled = state.page <= 1;
  nextBtn.disabled = state.page >= pages;
  for (const th of document.querySelectorAll("th[data-sort]")) {
    const on = th.dataset.sort === state.sort;
    th.setAttribute("aria-sort", on ? (state.dir === "asc" ? "ascending" : "descending") : "none");
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  state.page = 1;
  state.seen = null;
  load();
});
form.addEventListener("reset", () => {
  setTimeout(() => {
    state.page = 1;
    state.seen = null;
    load();
  });
});
let typing = null;
form.addEventListener("input", (e) => {
  if (e.target.type !== "search") {
    state.page = 1;
    state.seen = null;
    load();
    return;
  }
  clearTimeout(typing);
  typing = setTimeout(() => {
    state.page = 1;
    state.seen = null;
    load();
  }, 300);
});
for (const btn of form.querySelectorAll("[data-range]")) {
  btn.addEventListener("click", () => {
    const r = btn.dataset.range;
    form.elements.from.value = r === "all" ? "" : isoOf(localDA(r === "today" ? 0 : -6));
    form.elements.to.value = r === "all" ? "" : isoOf(localDA(0));
    state.page = 1;
    state.seen = null;
    load();
  });
}
for (const th of document.querySelectorAll("th[data-sort]")) {
  th.tabIndex = 0;
  const toggle = () => {
    const col = th.dataset.sort;
    if (state.sort === col) state.dir = state.dir === "asc" ? "desc" : "asc";
    else {
      state.sort = col;
      state.dir = col === "date" ? "desc" : "asc";
    }
    state.page = 1;
    load();
  };
  th.addEventListener("click", toggle);
  th.addEventListener("keydown", (e) => e.key === "Enter" && toggle());
}
prevBtn.addEventListener("click", () => {
  state.page = Math.max(1, state.page - 1);
  load();
});
nextBtn.addEventListener("click", () => {
  state.page += 1;
  load();
});

// New studies appear without a reload: poll while the page is visible.
setInterval(() => {
  if (document.visibilityState === "visible" && !inflight) load({ quiet: true });
}, POLL_MS);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") load({ quiet: true });
});

bindLangSelect(document.getElementById("lang"));
onLangChange(() => render());
// The admin link (admins only, see worklist.html); its two labels live here, not in i18n.js.
const adminLink = document.getElementById("admin-link");
const adminLabel = () => adminLink && (adminLink.textContent = lang() === "vi" ? "Quản trị" : "Admin");
onLangChange(adminLabel);
adminLabel();
applyTexts();
readUrl();
load();
window.pacsWorklist = { state, load, POLL_MS };
