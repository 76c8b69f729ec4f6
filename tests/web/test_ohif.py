"""The prebuilt OHIF viewer against the archive's DICOMweb API, in headless Chromium.

OHIF (``@ohif/app`` from npm, its ``dist/`` unchanged except for ``app-config.js``) is served by
a same-origin proxy that forwards ``/dicomweb`` to a real ``pacs serve`` with a bearer token,
the way a hospital's reverse proxy would (tests/fixtures/ohif.py). The viewer is a client
nobody here wrote: the study list must show the sample studies with their descriptions, a CT
must open with a drawn (non-blank) image, and no DICOMweb request OHIF makes may fail.

Screenshots and the log of proxied requests go to test-artifacts/.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.fixtures.browser import ARTIFACTS, save_screenshot
from tests.fixtures.ohif import OHIF_VERSION, OhifProxy, ohif_dist_dir  # noqa: F401 - fixtures
from tests.fixtures.server import PacsServer, make_server

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parents[2] / "sample_dicom"
#: OHIF's first load parses ~10 MB of JavaScript; generous, the whole file takes ~30 s.
FIRST_LOAD_MS = 60_000
RENDER_MS = 30_000

#: Statistics of the Cornerstone viewport canvas (a 2D canvas Cornerstone copies its render into).
CANVAS_STATS = """() => {
  const c = document.querySelector('[data-cy="viewport-pane"] canvas.cornerstone-canvas')
         || document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return null;
  const g = c.getContext('2d');
  if (!g) return null;
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0, sum = 0, sq = 0, lit = 0;
  for (let i = 0; i < d.length; i += 16) {
    const y = (d[i] + d[i + 1] + d[i + 2]) / 3;
    sum += y; sq += y * y; n += 1; if (y > 8) lit += 1;
  }
  const mean = sum / n;
  return { mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)), lit: lit / n,
           w: c.width, h: c.height };
}"""
DRAWN = f"(() => {{ const s = ({CANVAS_STATS})(); return !!s && s.std > 10 && s.lit > 0.05; }})()"


@dataclass
class OhifSite:
    server: PacsServer
    proxy: OhifProxy
    #: StudyInstanceUID → StudyDescription ("" when the study has none) of every archived study.
    studies: dict[str, str]
    ct_small_study: str
    phantom_study: str
    phantom_slices: int

    def failures_since(self, start: int) -> list[str]:
        return [str(r) for r in self.proxy.dicomweb_requests()[start:] if r.status >= 400]

    @contextmanager
    def interop(self) -> Iterator[None]:
        """Fail with the DICOMweb requests OHIF made that got a 4xx/5xx, first, whatever else
        went wrong (a timeout waiting for the page is usually the consequence of one)."""
        start = len(self.proxy.dicomweb_requests())
        try:
            yield
        except Exception as exc:
            failed = self.failures_since(start)
            if failed:
                raise AssertionError("DICOMweb requests OHIF made that failed:\n"
                                     + "\n".join(failed)) from exc
            raise
        failed = self.failures_since(start)
        assert not failed, "DICOMweb requests OHIF made that failed:\n" + "\n".join(failed)


def _descriptions(*folders: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            out[str(ds.StudyInstanceUID)] = str(ds.get("StudyDescription") or "")
    return out


@pytest.fixture(scope="module")
def ohif_site(tmp_path_factory: pytest.TempPathFactory, ohif_dist_dir: Path,  # noqa: F811
              ct_series: Path) -> Iterator[OhifSite]:
    """``pacs serve`` with the samples and the CT phantom, and OHIF in front of it."""
    ARTIFACTS.mkdir(exist_ok=True)
    server = make_server(tmp_path_factory.mktemp("ohif") / "data", samples=True, http_workers=1)
    server.start()
    proxy = None
    try:
        res = server.pacs("import", "-q", str(ct_series))
        assert res.returncode == 0, res.stdout + res.stderr
        res = server.pacs("token", "create", "admin", "--label", "OHIF reverse proxy (test)")
        token = res.stdout.strip()
        assert res.returncode == 0 and token, res.stdout + res.stderr
        proxy = OhifProxy(ohif_dist_dir, server.url(""), token).start()
        ct_small = pydicom.dcmread(SAMPLES / "CT" / "CT_small.dcm", stop_before_pixels=True)
        phantom = pydicom.dcmread(sorted(ct_series.glob("*.dcm"))[0], stop_before_pixels=True)
        yield OhifSite(server, proxy, _descriptions(SAMPLES, ct_series),
                       str(ct_small.StudyInstanceUID), str(phantom.StudyInstanceUID),
                       len(list(ct_series.glob("*.dcm"))))
    finally:
        if proxy is not None:
            (ARTIFACTS / "ohif-dicomweb-requests.txt").write_text(
                f"@ohif/app@{OHIF_VERSION} → pacs serve: every request the same-origin proxy passed on\n"
                + "".join(f"{r}\n" for r in proxy.dicomweb_requests()))
            proxy.stop()
        if server.running:
            server.stop()


@pytest.fixture
def page(browser: Any, ohif_site: OhifSite) -> Iterator[Any]:  # noqa: F811
    """A desktop-size page; no uncaught script error may happen on it."""
    context = browser.new_context(viewport={"width": 1366, "height": 800}, locale="en-US")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"uncaught errors in OHIF: {errors}"


def test_proxy_is_what_authenticates(ohif_site: OhifSite) -> None:
    """The archive itself wants credentials; OHIF gets them only through the proxy's token."""
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(ohif_site.server.url("/dicomweb/studies"), timeout=30)
    assert exc.value.code == 401
    with urllib.request.urlopen(ohif_site.proxy.url("/dicomweb/studies?limit=1"), timeout=30) as res:
        assert res.status == 200 and res.headers["Content-Type"].startswith("application/dicom+json")
    with urllib.request.urlopen(ohif_site.proxy.url("/app-config.js"), timeout=30) as res:
        assert b"@ohif/extension-default.dataSourcesModule.dicomweb" in res.read()


def test_study_list_shows_the_sample_studies(page: Any, ohif_site: OhifSite) -> None:
    with ohif_site.interop():
        page.goto(ohif_site.proxy.url("/?resultsPerPage=50"))
        page.wait_for_selector("[data-cy^='studyRow-']", timeout=FIRST_LOAD_MS)
        page.wait_for_function(f"document.querySelectorAll(\"[data-cy^='studyRow-']\").length >= "
                               f"{len(ohif_site.studies)}", timeout=RENDER_MS)
        save_screenshot(page, "ohif-study-list")

        assert page.inner_text("[data-cy='num-studies']").strip() == str(len(ohif_site.studies))
        shown = page.evaluate("""() => Object.fromEntries(
            Array.from(document.querySelectorAll("[data-cy^='studyRow-']"))
                 .map(r => [r.dataset.cy.slice('studyRow-'.length), r.textContent]))""")
        assert set(shown) == set(ohif_site.studies)
        described = {uid: d for uid, d in ohif_site.studies.items() if d}
        assert len(described) >= 10
        missing = {uid: d for uid, d in described.items() if d not in shown[uid]}
        assert not missing, f"descriptions not in their study's row: {missing}"
        # UTF-8 person names come through DICOM JSON (PN objects) intact.
        assert "Nguyễn, Văn An" in page.inner_text("[data-cy='study-list-results']")

        # The description filter is a QIDO-RS wildcard search (supportsWildcard: true).
        page.fill("[data-cy='input-description']", "SHOULDER")
        page.wait_for_function(
            "document.querySelector(\"[data-cy='num-studies']\").textContent.trim() === '2'",
            timeout=RENDER_MS)
        assert page.locator("[data-cy^='studyRow-']").count() == 2
        assert any("StudyDescription=*SHOULDER*" in r.path for r in ohif_site.proxy.dicomweb_requests())


def _open(page: Any, site: OhifSite, study: str) -> dict[str, Any]:
    page.goto(site.proxy.url(f"/viewer?StudyInstanceUIDs={study}"))
    page.wait_for_selector("canvas.cornerstone-canvas", timeout=FIRST_LOAD_MS)
    try:
        page.wait_for_function(DRAWN, timeout=RENDER_MS)
    finally:
        stats = page.evaluate(CANVAS_STATS)
    return stats  # type: ignore[no-any-return]


def test_ct_opens_with_an_image(page: Any, ohif_site: OhifSite) -> None:
    """The real sample CT (CT_small.dcm, 128x128) through WADO-RS metadata and frames."""
    start = len(ohif_site.proxy.dicomweb_requests())
    with ohif_site.interop():
        stats = _open(page, ohif_site, ohif_site.ct_small_study)
        save_screenshot(page, "ohif-viewer-ct")
        assert stats["std"] > 10 and stats["lit"] > 0.05, stats
        # Metadata reached the overlays: the study date, formatted by OHIF.
        assert "19-Jan-2004" in page.inner_text("[data-cy='viewport-pane']")
    requests = ohif_site.proxy.dicomweb_requests()[start:]
    assert any(r.path.endswith("/metadata") for r in requests)
    assert any("/frames/" in r.path for r in requests)


def test_ct_series_opens_and_scrolls(page: Any, ohif_site: OhifSite) -> None:
    """The synthetic CT phantom: every slice in the series metadata, scrolling fetches frames."""
    start = len(ohif_site.proxy.dicomweb_requests())
    n = ohif_site.phantom_slices
    overlay = "[data-cy='viewport-overlay-bottom-right']"
    with ohif_site.interop():
        stats = _open(page, ohif_site, ohif_site.phantom_study)
        assert stats["std"] > 10 and stats["lit"] > 0.05, stats
        page.wait_for_function(
            f"document.querySelector(\"{overlay}\")?.textContent.includes('/{n})')",
            timeout=RENDER_MS)
        assert f"(1/{n})" in page.inner_text(overlay)
        # No display-set warning (OHIF flags e.g. irregular spacing or missing positions).
        assert page.locator("[data-cy='study-browser-thumbnail'] #status-warning").count() == 0
        box = page.locator("[data-cy='viewport-pane']").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        for _ in range(n // 2):
            page.mouse.wheel(0, 120)
        page.wait_for_function(
            f"!document.querySelector(\"{overlay}\").textContent.includes('(1/{n})')",
            timeout=RENDER_MS)
        page.wait_for_function(DRAWN, timeout=RENDER_MS)
        save_screenshot(page, "ohif-viewer-ct-series")
    frames = {r.path.split("/instances/")[1].split("/")[0]
              for r in ohif_site.proxy.dicomweb_requests()[start:] if "/frames/" in r.path}
    assert len(frames) > 1, "OHIF fetched the frames of one slice only"
