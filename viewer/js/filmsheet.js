// Film sheet for referring doctors who still want paper: the chosen images (lossless PNG
// renders at their window), a patient header, W/L under each image, and "not for diagnosis"
// on the sheet. Composed on a canvas in the browser and saved as a PNG.

import { getBlob, instancePath } from "./api.js";
import { formatDate, formatSex, formatTime, t } from "./i18n.js";

const WIDTH = 1654; // A4 at 200 dpi
const MARGIN = 60;
const HEADER = 190;
const FOOTER = 110;
const CAPTION = 34;

function windowParam(w) {
  if (!w) return "";
  const fn = w.function && w.function !== "LINEAR" ? `,${w.function}` : "";
  return `&window=${Number(w.center.toPrecision(5))},${Number(Math.max(1, w.width).toPrecision(5))}${fn}`;
}

/** Compose the sheet; returns the canvas (and downloads it unless `download` is false). */
export async function exportFilm(app, items, { download = true } = {}) {
  const st = app.study;
  const cols = items.length <= 1 ? 1 : 2;
  const rows = Math.max(1, Math.ceil(items.length / cols));
  const cell = Math.floor((WIDTH - 2 * MARGIN - (cols - 1) * 20) / cols);
  const height = HEADER + rows * (cell + CAPTION + 20) + FOOTER;
  const canvas = document.createElement("canvas");
  canvas.width = WIDTH;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, WIDTH, height);

  // Header: patient and study.
  ctx.fillStyle = "#000";
  ctx.font = "bold 40px 'DejaVu Sans', 'Liberation Sans', sans-serif";
  ctx.fillText(st.patient_name_display || "—", MARGIN, 70);
  ctx.font = "26px 'DejaVu Sans', 'Liberation Sans', sans-serif";
  ctx.fillText([st.patient_id, formatDate(st.birth_date), formatSex(st.sex)].filter(Boolean).join("   ·   "), MARGIN, 112);
  ctx.fillText([st.description, `${formatDate(st.study_date)} ${formatTime(st.study_time)}`.trim(),
    st.accession].filter(Boolean).join("   ·   "), MARGIN, 150);
  ctx.fillStyle = "#c00";
  ctx.font = "bold 30px 'DejaVu Sans', 'Liberation Sans', sans-serif";
  ctx.textAlign = "right";
  ctx.fillText(t("notForDiagnosis"), WIDTH - MARGIN, 70);
  ctx.textAlign = "left";

  // Images.
  const bitmaps = await Promise.all(items.map(async (it) => {
    const path = instancePath(st.study_uid, it.series.series_uid, it.slice.sop);
    const url = `/dicomweb/${path}/frames/${it.slice.frame}/rendered?accept=image/png`
      + `&viewport=${cell},${cell}${windowParam(it.explicitWindow)}`;
    return createImageBitmap(await getBlob(url));
  }));
  items.forEach((it, i) => {
    const x = MARGIN + (i % cols) * (cell + 20);
    const y = HEADER + Math.floor(i / cols) * (cell + CAPTION + 20);
    ctx.fillStyle = "#000";
    ctx.fillRect(x, y, cell, cell);
    const bmp = bitmaps[i];
    const s = Math.min(cell / bmp.width, cell / bmp.height);
    const w = bmp.width * s;
    const h = bmp.height * s;
    ctx.filter = it.invert ? "invert(1)" : "none";
    ctx.drawImage(bmp, x + (cell - w) / 2, y + (cell - h) / 2, w, h);
    ctx.filter = "none";
    ctx.fillStyle = "#000";
    ctx.font = "22px 'DejaVu Sans', 'Liberation Sans', sans-serif";
    const wl = it.window && !it.color ? `   ${t("wlLabel")} ${Math.round(it.window.width)}/${Math.round(it.window.center)}` : "";
    ctx.fillText(`${t("seLabel")} ${it.series.number ?? "—"} ${it.series.modality || ""}   ${t("imLabel")} ${it.index + 1}/${it.count}${wl}`,
      x, y + cell + 26);
  });

  // Footer: the warning again, who printed it and when.
  ctx.fillStyle = "#c00";
  ctx.font = "bold 34px 'DejaVu Sans', 'Liberation Sans', sans-serif";
  ctx.textAlign = "center";
  ctx.fillText(t("notForDiagnosis"), WIDTH / 2, height - 60);
  ctx.fillStyle = "#444";
  ctx.font = "20px 'DejaVu Sans', 'Liberation Sans', sans-serif";
  const who = document.querySelector(".who")?.textContent || "";
  ctx.fillText(`${t("printed")}: ${new Date().toLocaleString()} · ${who} · mini-PACS`, WIDTH / 2, height - 24);
  ctx.textAlign = "left";

  if (download) {
    const blob = await new Promise((res) => canvas.toBlob(res, "image/png"));
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `film-${(st.patient_id || "study").replace(/[^\w.-]+/g, "_")}-${st.study_date || ""}.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }
  return canvas;
}
