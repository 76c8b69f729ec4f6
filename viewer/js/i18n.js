// Vietnamese and English texts, the language choice, and locale-aware dates.
// The language comes from the user's last choice (localStorage + a cookie the server reads
// for <html lang>), else from the browser's preferred languages.

const TEXT = {
  en: {
    worklist: "Worklist", search: "Search", clear: "Clear",
    patientName: "Patient name", patientId: "Patient ID", accession: "Accession",
    dateFrom: "From", dateTo: "To", modality: "Modality", any: "Any",
    today: "Today", last7: "7 days", allDates: "All dates",
    colName: "Patient", colId: "ID", colBirth: "Birth date", colDate: "Study date",
    colDesc: "Description", colMod: "Modality", colAcc: "Accession", colSeries: "Series",
    colImages: "Images",
    found: (n) => `${n} ${n === 1 ? "study" : "studies"}`, page: (p, n) => `Page ${p} of ${n}`,
    prev: "Previous", next: "Next", noStudies: "No studies match.", newStudies: (n) => `${n} new`,
    signOut: "Sign out", language: "Language", error: "Something went wrong", notFound: "Study not found",
    layout: "Layout", tools: "Tools",
    tWL: "Window/level", tStack: "Scroll slices", tPan: "Pan", tZoom: "Zoom", tDistance: "Distance", tAngle: "Angle",
    tProbe: "Pixel value", tRect: "Rectangle ROI", tEllipse: "Ellipse ROI",
    fit: "Fit", oneToOne: "1:1", invert: "Invert", rotate: "Rotate", flipH: "Flip H",
    flipV: "Flip V", reset: "Reset", cine: "Cine", fps: "fps", overlay: "Overlay",
    tags: "Tags", film: "Film sheet", addFilm: "Add to film", exportFilm: "Export PNG",
    filmEmpty: "No images selected: the visible viewports are used.",
    filmCount: (n) => `${n} image(s) on the sheet`, clearAnn: "Clear measurements",
    presets: "Presets", fileWindow: "File", wlLabel: "W/L", zoomLabel: "Zoom",
    imLabel: "Im", seLabel: "Se", locLabel: "Loc", thkLabel: "Thk",
    uncalibrated: "uncalibrated", detector: "at detector",
    pBrain: "Brain", pSubdural: "Subdural", pStroke: "Stroke", pLung: "Lung",
    pMediastinum: "Mediastinum", pAbdomen: "Abdomen", pLiver: "Liver", pBone: "Bone",
    filterTags: "Filter tags", close: "Close", mean: "mean", sd: "SD", area: "area",
    notForDiagnosis: "NOT FOR DIAGNOSIS", printed: "Printed", lossy: "LOSSY",
    dropHere: "Drag a series here", noImages: "No images in this series",
    sexM: "M", sexF: "F", sexO: "O", images: "images", back: "Worklist",
    // Shared study links and remote consultation (share.js)
    share: "Share link", shares: "Shared links and notes", shareTitle: "Share this study",
    shareLabel: "Label", shareLabelPh: "e.g. Dr. Hùng, cardiology", shareDays: "Expires after",
    daysN: (n) => `${n} ${n === 1 ? "day" : "days"}`, sharePin: "PIN (optional)",
    sharePinHint: "The recipient types it to open the link: send it separately.",
    shareDeid: "De-identify (no patient name, ID or birth date)", shareDownload: "Allow download (ZIP)",
    shareNotes: "Allow consultation notes", shareSeries: "Series", allSeries: "All series",
    createLink: "Create link", cancel: "Cancel", shareCreated: "Link created",
    copy: "Copy", copied: "Copied", printQr: "Print", saveQr: "Save QR", done: "Done",
    newLink: "New link", linksTitle: "Shared links", noShares: "No shared links yet.",
    stActive: "active", stExpired: "expired", stRevoked: "revoked",
    revoke: "Revoke", confirmRevoke: "Revoke now?", sendLink: "Send…",
    expiresAt: "expires", createdAt: "created", viewsN: (n) => `${n} ${n === 1 ? "view" : "views"}`,
    lastAccess: "last opened", never: "never", flagPin: "PIN", flagDeid: "de-identified",
    flagDownload: "download", flagNotes: "notes", seriesN: (n) => `${n} series`,
    notesTitle: "Consultation notes", noNotes: "No notes yet.", notes: "Notes",
    yourName: "Your name", opinion: "Opinion", send: "Send", refresh: "Refresh",
    sharedStudy: "Shared study", expiresOn: (d) => `expires ${d}`, deidentified: "de-identified",
    downloadZip: "Download (ZIP)", linkEnded: "This link has ended.",
  },
  vi: {
    worklist: "Danh sách ca chụp", search: "Tìm kiếm", clear: "Xóa lọc",
    patientName: "Họ tên bệnh nhân", patientId: "Mã bệnh nhân", accession: "Số phiếu chụp",
    dateFrom: "Từ ngày", dateTo: "Đến ngày", modality: "Loại máy", any: "Tất cả",
    today: "Hôm nay", last7: "7 ngày", allDates: "Mọi ngày",
    colName: "Bệnh nhân", colId: "Mã BN", colBirth: "Ngày sinh", colDate: "Ngày chụp",
    colDesc: "Mô tả", colMod: "Loại máy", colAcc: "Số phiếu", colSeries: "Loạt ảnh",
    colImages: "Số ảnh",
    found: (n) => `${n} ca chụp`, page: (p, n) => `Trang ${p}/${n}`,
    prev: "Trước", next: "Sau", noStudies: "Không có ca chụp phù hợp.", newStudies: (n) => `${n} ca mới`,
    signOut: "Đăng xuất", language: "Ngôn ngữ", error: "Đã xảy ra lỗi", notFound: "Không tìm thấy ca chụp",
    layout: "Bố cục", tools: "Công cụ",
    tWL: "Độ rộng/mức cửa sổ", tStack: "Cuộn lát cắt", tPan: "Di chuyển", tZoom: "Phóng to", tDistance: "Đo khoảng cách",
    tAngle: "Đo góc", tProbe: "Giá trị điểm ảnh", tRect: "Vùng chữ nhật", tEllipse: "Vùng elip",
    fit: "Vừa khung", oneToOne: "1:1", invert: "Đảo màu", rotate: "Xoay", flipH: "Lật ngang",
    flipV: "Lật dọc", reset: "Đặt lại", cine: "Chiếu động", fps: "hình/giây", overlay: "Thông tin",
    tags: "Thẻ DICOM", film: "Phim in", addFilm: "Thêm vào phim", exportFilm: "Xuất PNG",
    filmEmpty: "Chưa chọn ảnh: dùng các khung đang hiển thị.",
    filmCount: (n) => `${n} ảnh trên phim`, clearAnn: "Xóa các phép đo",
    presets: "Cửa sổ mẫu", fileWindow: "Theo ảnh", wlLabel: "W/L", zoomLabel: "Thu phóng",
    imLabel: "Ảnh", seLabel: "Loạt", locLabel: "Vị trí", thkLabel: "Độ dày",
    uncalibrated: "chưa hiệu chuẩn", detector: "tại đầu thu",
    pBrain: "Não", pSubdural: "Dưới màng cứng", pStroke: "Đột quỵ", pLung: "Phổi",
    pMediastinum: "Trung thất", pAbdomen: "Bụng", pLiver: "Gan", pBone: "Xương",
    filterTags: "Lọc thẻ", close: "Đóng", mean: "TB", sd: "ĐLC", area: "diện tích",
    notForDiagnosis: "KHÔNG DÙNG ĐỂ CHẨN ĐOÁN", printed: "In lúc", lossy: "NÉN MẤT DỮ LIỆU",
    dropHere: "Kéo một loạt ảnh vào đây", noImages: "Loạt này không có ảnh",
    sexM: "Nam", sexF: "Nữ", sexO: "Khác", images: "ảnh", back: "Danh sách",
    share: "Chia sẻ liên kết", shares: "Liên kết chia sẻ và ý kiến hội chẩn", shareTitle: "Chia sẻ ca chụp này",
    shareLabel: "Nhãn", shareLabelPh: "vd. BS. Hùng, khoa Tim mạch", shareDays: "Hết hạn sau",
    daysN: (n) => `${n} ngày`, sharePin: "Mã PIN (không bắt buộc)",
    sharePinHint: "Người nhận nhập mã này để mở liên kết: hãy gửi mã riêng.",
    shareDeid: "Ẩn danh (không có tên, mã bệnh nhân, ngày sinh)", shareDownload: "Cho phép tải về (ZIP)",
    shareNotes: "Cho phép ghi ý kiến hội chẩn", shareSeries: "Loạt ảnh", allSeries: "Tất cả loạt ảnh",
    createLink: "Tạo liên kết", cancel: "Hủy", shareCreated: "Đã tạo liên kết",
    copy: "Sao chép", copied: "Đã sao chép", printQr: "In", saveQr: "Lưu mã QR", done: "Xong",
    newLink: "Tạo liên kết mới", linksTitle: "Liên kết chia sẻ", noShares: "Chưa có liên kết chia sẻ.",
    stActive: "còn hiệu lực", stExpired: "đã hết hạn", stRevoked: "đã thu hồi",
    revoke: "Thu hồi", confirmRevoke: "Thu hồi ngay?", sendLink: "Gửi…",
    expiresAt: "hết hạn", createdAt: "tạo lúc", viewsN: (n) => `${n} lượt xem`,
    lastAccess: "mở lần cuối", never: "chưa mở", flagPin: "PIN", flagDeid: "ẩn danh",
    flagDownload: "tải về", flagNotes: "ý kiến", seriesN: (n) => `${n} loạt`,
    notesTitle: "Ý kiến hội chẩn", noNotes: "Chưa có ý kiến.", notes: "Ý kiến",
    yourName: "Họ tên của bạn", opinion: "Ý kiến", send: "Gửi", refresh: "Làm mới",
    sharedStudy: "Ca chụp được chia sẻ", expiresOn: (d) => `hết hạn ${d}`, deidentified: "đã ẩn danh",
    downloadZip: "Tải về (ZIP)", linkEnded: "Liên kết này đã hết hiệu lực.",
  },
};

export const LANGS = ["vi", "en"];

function storedLang() {
  try {
    const v = localStorage.getItem("pacs.lang");
    return LANGS.includes(v) ? v : null;
  } catch {
    return null;
  }
}

/** The browser's preferred language among ours ("vi" for vi, vi-VN ...; else "en"). */
export function browserLang() {
  const prefs = navigator.languages?.length ? navigator.languages : [navigator.language || "en"];
  for (const p of prefs) {
    const base = String(p).toLowerCase().split("-")[0];
    if (LANGS.includes(base)) return base;
  }
  return "en";
}

let current = storedLang() || browserLang();
const listeners = new Set();

export function lang() {
  return current;
}

/** The locale for dates and numbers: the UI language in the user's region when it matches. */
export function locale() {
  const nav = navigator.language || "";
  if (nav.toLowerCase().startsWith(current)) return nav;
  return current === "vi" ? "vi-VN" : "en-GB";
}

export function t(key, ...args) {
  const v = TEXT[current][key] ?? TEXT.en[key] ?? key;
  return typeof v === "function" ? v(...args) : v;
}

export function setLang(value) {
  if (!LANGS.includes(value)) return;
  current = value;
  try {
    localStorage.setItem("pacs.lang", value);
  } catch {
    /* private mode: the cookie still remembers */
  }
  document.cookie = `pacs_lang=${value}; path=/; max-age=31536000; SameSite=Lax`;
  applyTexts();
  for (const fn of listeners) fn(value);
}

export function onLangChange(fn) {
  listeners.add(fn);
}

/** Fill every [data-i18n] (text), [data-i18n-title] and [data-i18n-placeholder] element. */
export function applyTexts(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-title]")) {
    el.title = t(el.dataset.i18nTitle);
    el.setAttribute("aria-label", el.title);
  }
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
}

/** A language switcher <select> bound to setLang. */
export function bindLangSelect(select) {
  select.value = current;
  select.addEventListener("change", () => setLang(select.value));
  onLangChange((v) => (select.value = v));
}

/** DICOM DA (YYYYMMDD) in the user's locale (vi: 25/11/2026); the raw text if malformed. */
export function formatDate(da) {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(String(da || "").trim());
  if (!m) return String(da || "").trim();
  const d = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3]));
  return new Intl.DateTimeFormat(locale(), { dateStyle: "short", timeZone: "UTC" }).format(d);
}

/** A moment (ISO 8601 text, or seconds / milliseconds since 1970) as a local date and time. */
export function formatDateTime(value) {
  if (value === null || value === undefined || value === "") return "";
  let d;
  if (typeof value === "number" || /^\d+(\.\d+)?$/.test(String(value))) {
    const n = Number(value);
    d = new Date(n < 1e12 ? n * 1000 : n);
  } else d = new Date(String(value));
  if (Number.isNaN(d.getTime())) return String(value);
  return new Intl.DateTimeFormat(locale(), { dateStyle: "short", timeStyle: "short" }).format(d);
}

/** DICOM TM (HHMMSS.FFFFFF) as HH:MM. */
export function formatTime(tm) {
  const m = /^(\d{2})(\d{2})?/.exec(String(tm || "").trim());
  if (!m) return "";
  return `${m[1]}:${m[2] || "00"}`;
}

export function formatSex(sex) {
  const s = String(sex || "").trim().toUpperCase();
  return s === "M" ? t("sexM") : s === "F" ? t("sexF") : s === "O" ? t("sexO") : s;
}

/** A number in the user's locale (vi uses a decimal comma). */
export function formatNumber(value, digits = 1, grouping = true) {
  return new Intl.NumberFormat(locale(), {
    minimumFractionDigits: digits, maximumFractionDigits: digits, useGrouping: grouping,
  }).format(value);
}

/** Local date as YYYYMMDD, `days` days from today. */
export function localDA(days = 0) {
  const d = new Date();
  d.setDate(d.getDate() + days);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}`;
}
