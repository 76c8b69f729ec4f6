// Same-origin calls to the server: the session cookie goes along, a 401 sends the user to
// the sign-in page (coming back here afterwards), state changes carry the CSRF token.
// On a shared study link (/s/<token>) every server path is the normal one under that
// prefix (BASE, from <meta name="pacs-base">), and a lost link session goes back to the
// link (its PIN page) instead of the sign-in page.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Marks our own calls: the server then answers 401 without a Basic challenge, which
 * would make the browser show its password dialog instead of our sign-in page. */
export const SCRIPT = { "X-Requested-With": "pacs-viewer" };

/** "" when signed in; "/s/<token>" on a shared study link. */
export const BASE = (document.querySelector('meta[name="pacs-base"]')?.content || "").replace(/\/+$/, "");

/** A server path ("/api/...", "/dicomweb/...") as this page must fetch it. */
export function withBase(url) {
  if (!BASE || typeof url !== "string" || !url.startsWith("/") || url.startsWith("//")) return url;
  if (url === BASE || url.startsWith(`${BASE}/`) || url.startsWith(`${BASE}?`)) return url;
  return BASE + url;
}

export function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]')?.content || "";
}

export function toSignIn() {
  if (BASE) {
    location.assign(BASE); // the link again: its PIN page, or the "expired/revoked" page
    return;
  }
  const here = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(here)}`);
}

/** GET (or other method) a JSON resource. */
export async function getJSON(url, { signal, method = "GET", body } = {}) {
  const headers = { Accept: "application/json", ...SCRIPT };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(withBase(url), {
    method, signal, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 || (BASE && res.status === 410)) {
    toSignIn();
    throw new ApiError(res.status, "sign-in required");
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    /* not JSON */
  }
  if (!res.ok) throw new ApiError(res.status, data?.error || res.statusText);
  return data;
}

/** Fetch an image as a Blob (for the image cache). */
export async function getBlob(url, { signal } = {}) {
  const res = await fetch(withBase(url), { signal, credentials: "same-origin", headers: SCRIPT });
  if (res.status === 401 || (BASE && res.status === 410)) {
    toSignIn();
    throw new ApiError(res.status, "sign-in required");
  }
  if (!res.ok) {
    let msg = res.statusText;
    try {
      msg = (await res.json()).error || msg;
    } catch {
      /* not JSON */
    }
    throw new ApiError(res.status, msg);
  }
  return res.blob();
}

export const enc = encodeURIComponent;

export function instancePath(study, series, sop) {
  return `studies/${enc(study)}/series/${enc(series)}/instances/${enc(sop)}`;
}
