// Measurement geometry and drawing. Points are in image pixel coordinates (x = column,
// y = row, continuous: pixel (0, 0) covers [0, 1) x [0, 1)); lengths use the spacing the
// server reports (PS3.3 10.7.1.3: PixelSpacing = row spacing \ column spacing, in mm).

import { formatNumber, t } from "./i18n.js";

/** Length of p0-p1: {value, unit, calibrated, text}. */
export function measureDistance(p0, p1, spacing) {
  const dx = p1.x - p0.x;
  const dy = p1.y - p0.y;
  if (!spacing) {
    const px = Math.hypot(dx, dy);
    return { value: px, unit: "px", calibrated: false, text: `${formatNumber(px, 1)} px (${t("uncalibrated")})` };
  }
  // x runs along a row: column spacing; y runs down the columns: row spacing.
  const mm = Math.hypot(dx * spacing.column, dy * spacing.row);
  const where = spacing.source === "ImagerPixelSpacing" ? ` (${t("detector")})` : "";
  return { value: mm, unit: "mm", calibrated: true, text: `${formatNumber(mm, 1)} mm${where}` };
}

/** Angle ABC at vertex B in degrees, in physical space when calibrated. */
export function measureAngle(a, b, c, spacing) {
  const sx = spacing ? spacing.column : 1;
  const sy = spacing ? spacing.row : 1;
  const v1 = [(a.x - b.x) * sx, (a.y - b.y) * sy];
  const v2 = [(c.x - b.x) * sx, (c.y - b.y) * sy];
  const n = Math.hypot(...v1) * Math.hypot(...v2);
  if (!n) return { value: 0, text: "0°" };
  const cos = Math.min(1, Math.max(-1, (v1[0] * v2[0] + v1[1] * v2[1]) / n));
  const deg = (Math.acos(cos) * 180) / Math.PI;
  return { value: deg, text: `${formatNumber(deg, 1)}°` };
}

export function roiText(stats) {
  if (!stats) return "…";
  if (stats.error) return stats.error;
  const unit = stats.kind === "modality" ? "" : " (Y)";
  const area = stats.area_mm2 != null
    ? `${formatNumber(stats.area_mm2 / 100, 2)} cm²`
    : `${formatNumber(stats.area_px, 0)} px² (${t("uncalibrated")})`;
  return `${t("mean")} ${formatNumber(stats.mean, 1)}${unit} · ${t("sd")} ${formatNumber(stats.sd, 1)} · ${t("area")} ${area}`;
}

export function probeText(ann) {
  if (ann.value == null) return ann.error || "…";
  if (Array.isArray(ann.value)) return `RGB ${ann.value.join(", ")}`;
  const unit = ann.modality === "CT" ? " HU" : "";
  return `${formatNumber(ann.value, 1)}${unit} [${Math.floor(ann.p.x)}, ${Math.floor(ann.p.y)}]`;
}

/** The label text of an annotation (also what the measurement list shows). */
export function labelOf(ann, spacing) {
  switch (ann.type) {
    case "distance":
      return measureDistance(ann.p0, ann.p1, spacing).text;
    case "angle":
      return ann.pts.length < 3 ? "…" : measureAngle(ann.pts[0], ann.pts[1], ann.pts[2], spacing).text;
    case "probe":
      return probeText(ann);
    case "rect":
    case "ellipse":
      return roiText(ann.stats);
    default:
      return "";
  }
}

/** Where the label goes (image coordinates). */
export function anchorOf(ann) {
  switch (ann.type) {
    case "distance":
      return ann.p1;
    case "angle":
      return ann.pts[1] || ann.pts[0];
    case "probe":
      return ann.p;
    default:
      return { x: Math.max(ann.p0.x, ann.p1.x), y: Math.max(ann.p0.y, ann.p1.y) };
  }
}

/** Draw annotations on a canvas whose transform is the identity; toScreen maps image -> canvas. */
export function drawAnnotations(ctx, anns, toScreen, dpr) {
  ctx.save();
  ctx.lineWidth = 1.5 * dpr;
  for (const ann of anns) {
    ctx.strokeStyle = ann.done ? "#ffd400" : "#4fc3f7";
    ctx.fillStyle = ctx.strokeStyle;
    ctx.beginPath();
    if (ann.type === "distance") {
      const a = toScreen(ann.p0);
      const b = toScreen(ann.p1);
      ctx.moveTo(a.x, a.y);
      ctx.lineTo(b.x, b.y);
      ctx.stroke();
      for (const p of [a, b]) ctx.fillRect(p.x - 2 * dpr, p.y - 2 * dpr, 4 * dpr, 4 * dpr);
    } else if (ann.type === "angle") {
      const pts = ann.pts.map(toScreen);
      ctx.moveTo(pts[0].x, pts[0].y);
      for (const p of pts.slice(1)) ctx.lineTo(p.x, p.y);
      ctx.stroke();
    } else if (ann.type === "probe") {
      const p = toScreen(ann.p);
      const r = 6 * dpr;
      ctx.moveTo(p.x - r, p.y);
      ctx.lineTo(p.x + r, p.y);
      ctx.moveTo(p.x, p.y - r);
      ctx.lineTo(p.x, p.y + r);
      ctx.stroke();
    } else if (ann.type === "rect" || ann.type === "ellipse") {
      const corners = [
        { x: ann.p0.x, y: ann.p0.y }, { x: ann.p1.x, y: ann.p0.y },
        { x: ann.p1.x, y: ann.p1.y }, { x: ann.p0.x, y: ann.p1.y },
      ].map(toScreen);
      if (ann.type === "rect") {
        ctx.moveTo(corners[0].x, corners[0].y);
        for (const c of corners.slice(1)) ctx.lineTo(c.x, c.y);
        ctx.closePath();
      } else {
        // An axis-aligned ellipse in image space is an affine image of the unit circle.
        const c = toScreen({ x: (ann.p0.x + ann.p1.x) / 2, y: (ann.p0.y + ann.p1.y) / 2 });
        const ex = toScreen({ x: ann.p1.x, y: (ann.p0.y + ann.p1.y) / 2 });
        const ey = toScreen({ x: (ann.p0.x + ann.p1.x) / 2, y: ann.p1.y });
        for (let i = 0; i <= 48; i += 1) {
          const a = (i / 48) * 2 * Math.PI;
          const x = c.x + (ex.x - c.x) * Math.cos(a) + (ey.x - c.x) * Math.sin(a);
          const y = c.y + (ex.y - c.y) * Math.cos(a) + (ey.y - c.y) * Math.sin(a);
          if (i === 0) ctx.moveTo(x, y);
          else ctx.lineTo(x, y);
        }
      }
      ctx.stroke();
    }
  }
  ctx.restore();
}
