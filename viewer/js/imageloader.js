// Rendered images from the server: a byte-bounded cache of encoded images (small: PNG of a
// CT slice is ~60 KB), a short list of decoded bitmaps, and a prefetch queue with a few
// connections of its own so neighbours load while the user looks at the current slice.

import { getBlob } from "./api.js";

class LRU {
  constructor(limit, sizeOf = () => 1) {
    this.limit = limit;
    this.sizeOf = sizeOf;
    this.map = new Map();
    this.total = 0;
  }
  get(key) {
    const v = this.map.get(key);
    if (v === undefined) return undefined;
    this.map.delete(key);
    this.map.set(key, v);
    return v;
  }
  has(key) {
    return this.map.has(key);
  }
  set(key, value) {
    if (this.map.has(key)) this.delete(key);
    this.map.set(key, value);
    this.total += this.sizeOf(value);
    for (const [k, v] of this.map) {
      if (this.total <= this.limit || this.map.size <= 1) break;
      this.map.delete(k);
      this.total -= this.sizeOf(v);
    }
  }
  delete(key) {
    const v = this.map.get(key);
    if (v === undefined) return;
    this.map.delete(key);
    this.total -= this.sizeOf(v);
  }
}

export class ImageLoader {
  constructor({ prefetchSlots = 4, cacheBytes = 384 * 1024 * 1024, bitmaps = 24 } = {}) {
    this.blobs = new LRU(cacheBytes, (b) => b.size || 0);
    this.bitmaps = new LRU(bitmaps);
    this.pending = new Map(); // url -> Promise<Blob>
    this.queue = []; // [{url, priority}]
    this.prefetchSlots = prefetchSlots;
    this.active = 0;
    this.stats = { fetched: 0, hits: 0, prefetched: 0 };
    this.listeners = new Set(); // called with the url of every image that arrives
  }

  onArrival(fn) {
    this.listeners.add(fn);
  }

  /** The encoded image now: from the cache, joining a running fetch, or fetched first. */
  blob(url) {
    const cached = this.blobs.get(url);
    if (cached) {
      this.stats.hits += 1;
      return Promise.resolve(cached);
    }
    const running = this.pending.get(url);
    if (running) return running;
    this.queue = this.queue.filter((q) => q.url !== url);
    return this._fetch(url, false);
  }

  /** A decoded bitmap (decoded images are kept only for the few most recent). */
  async bitmap(url) {
    const hit = this.bitmaps.get(url);
    if (hit) return hit;
    const blob = await this.blob(url);
    const bmp = await createImageBitmap(blob);
    this.bitmaps.set(url, bmp);
    return bmp;
  }

  has(url) {
    return this.blobs.has(url);
  }

  /** Queue urls for prefetch, nearest first (replaces the previous prefetch list). */
  prefetch(urls) {
    this.queue = urls
      .filter((u) => !this.blobs.has(u) && !this.pending.has(u))
      .map((url, i) => ({ url, priority: i }));
    this._pump();
  }

  _fetch(url, background) {
    const p = getBlob(url)
      .then((b) => {
        this.blobs.set(url, b);
        this.stats.fetched += 1;
        if (background) this.stats.prefetched += 1;
        for (const fn of this.listeners) fn(url);
        return b;
      })
      .finally(() => {
        this.pending.delete(url);
        if (background) {
          this.active -= 1;
          this._pump();
        }
      });
    this.pending.set(url, p);
    return p;
  }

  _pump() {
    while (this.active < this.prefetchSlots && this.queue.length) {
      const { url } = this.queue.shift();
      if (this.blobs.has(url) || this.pending.has(url)) continue;
      this.active += 1;
      this._fetch(url, true).catch(() => {});
    }
  }
}
