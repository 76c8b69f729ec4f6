"""The reading room in a real browser: Debian's headless Chromium driven by Playwright,
against ``pacs serve`` with the sample studies and a synthetic CT phantom (48 slices of
256x256, 1.4 mm pixels, HU known per pixel).

Screenshots go to test-artifacts/ for people to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.fixtures.browser import ReadingRoom, make_extra_study, save_screenshot

pytestmark = pytest.mark.slow

CANVAS_STATS = """(sel) => {
  const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sq = 0, sig = 0, n = 0;
  for (let i = 0; i < d.length; i += 16) {
    const y = (d[i] + d[i + 1] + d[i + 2]) / 3;
    sum += y; sq += y * y; n += 1; sig = (sig * 31 + y) % 1000000007;
  }
  const mean = sum / n;
  return { mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)), sig, w: c.width, h: c.height };
}"""
ACTIVE_CANVAS = ".viewport.active canvas"


def sign_in(page: Any, room: ReadingRoom, path: str = "/worklist") -> None:
    page.goto(room.url(path))
    assert "/login" in page.url  # signed out: the sign-in page, not the data
    page.fill("#u", room.username)
    page.fill("#p", room.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(path) + r"(\?.*)?$"))


@pytest.fixture
def page(browser: Any, reading_room: ReadingRoom, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A signed-in English page at desktop size (1366x800)."""
    context = browser.new_context(viewport={"width": 1366, "height": 800}, locale="en-US")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(pg, reading_room)
    yield pg
    context.close()
    assert not errors, errors  # no uncaught script error on any page


def open_phantom(page: Any, room: ReadingRoom) -> None:
    page.goto(room.url(f"/viewer/{room.phantom_study}"))
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")


def shown_index(page: Any) -> int:
    return int(page.evaluate("pacsViewer.active.el.dataset.shown"))


def wait_shown(page: Any, index: int) -> None:
    page.wait_for_function(f"pacsViewer.active.el.dataset.shown === '{index}'")


def to_client(page: Any, x: float, y: float) -> dict[str, float]:
    return page.evaluate(f"pacsViewer.active.toClient({x}, {y})")  # type: ignore[no-any-return]


def drag(page: Any, a: dict[str, float], b: dict[str, float], steps: int = 6) -> None:
    page.mouse.move(a["x"], a["y"])
    page.mouse.down()
    page.mouse.move(b["x"], b["y"], steps=steps)
    page.mouse.up()


def measurements(page: Any) -> list[str]:
    return page.locator(".viewport.active .measure-list li").all_inner_texts()  # type: ignore[no-any-return]


def number(text: str) -> float:
    m = re.search(r"-?[\d,]+(\.\d+)?", text)
    assert m, text
    return float(m.group(0).replace(",", ""))


def phantom_slice(room: ReadingRoom, index: int) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(room.phantom_dir.glob("*.dcm"))[index])


# -- sign-in and worklist ---------------------------------------------------------------


def test_wrong_password_and_signed_out_requests_show_no_data(browser: Any, reading_room: ReadingRoom) -> None:
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    page.goto(reading_room.url(f"/viewer/{reading_room.phantom_study}"))
    assert "/login?next=" in page.url
    page.fill("#u", reading_room.username)
    page.fill("#p", "not the password")
    with page.expect_response(lambda r: r.url.endswith("/login")) as resp:
        page.click("button[type=submit]")
    assert resp.value.status == 401
    assert page.locator("[role=alert]").inner_text().startswith("Wrong user name or password")
    assert "NGUY" not in page.content()
    api = page.request.get(reading_room.url("/api/worklist"))
    assert api.status == 401 and "rows" not in api.text()
    context.close()


def test_worklist_lists_the_samples_and_searches_with_and_without_accents(
    page: Any, reading_room: ReadingRoom,
) -> None:
    page.wait_for_selector("#studies tbody td.name a")
    rows = page.locator("#studies tbody tr")
    total = reading_room.api("/api/worklist")["total"]
    assert page.locator("#count").inner_text() == f"{total} studies"
    assert rows.count() == min(total, 50) and total >= 30
    names = page.locator("#studies tbody td.name").all_inner_texts()
    assert "NGUYỄN THỊ LAN" in names and "ĐẶNG MINH CHÂU" in names
    save_screenshot(page, "worklist-desktop")

    def search(text: str) -> list[str]:
        with page.expect_response(lambda r: "/api/worklist" in r.url and "name=" in r.url):
            page.fill("input[name=name]", text)
        page.wait_for_function("!document.body.classList.contains('busy')")
        return page.locator("#studies tbody td.name").all_inner_texts()  # type: ignore[no-any-return]

    assert search("nguyen van") == ["NGUYỄN VĂN AN"]
    assert search("Nguyễn Văn") == ["NGUYỄN VĂN AN"]
    assert search("dang minh") == ["ĐẶNG MINH CHÂU"]
    assert search("nguyen") == ["NGUYỄN THỊ LAN", "NGUYỄN VĂN AN"]  # newest study first
    # Sorting by name flips the order; the URL keeps the search for a reload.
    page.click("th[data-sort=name]")
    page.wait_for_function("document.querySelector('th[data-sort=name]').getAttribute('aria-sort') === 'ascending'")
    page.wait_for_function("!document.body.classList.contains('busy')")
    assert page.locator("#studies tbody td.name").all_inner_texts() == ["NGUYỄN THỊ LAN", "NGUYỄN VĂN AN"]
    page.click("th[data-sort=name]")
    page.wait_for_function("document.querySelector('th[data-sort=name]').getAttribute('aria-sort') === 'descending'")
    page.wait_for_function("!document.body.classList.contains('busy')")
    assert page.locator("#studies tbody td.name").all_inner_texts() == ["NGUYỄN VĂN AN", "NGUYỄN THỊ LAN"]
    assert "name=nguyen" in page.url and "sort=name" in page.url


# -- the viewer -------------------------------------------------------------------------


def test_open_a_ct_scroll_and_window(page: Any, reading_room: ReadingRoom) -> None:
    page.fill("input[name=name]", "nguyen thi lan")
    page.wait_for_function("document.querySelectorAll('#studies tbody td.name a').length === 1")
    page.click("#studies tbody td.name a")
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    first = page.evaluate(CANVAS_STATS, ACTIVE_CANVAS)
    assert first["std"] > 20 and 5 < first["mean"] < 200  # an image, not a blank canvas
    overlay = page.locator(".viewport.active .ov.tl").inner_text()
    assert "NGUYỄN THỊ LAN" in overlay and "CT-SYN-0007" in overlay
    page.wait_for_function("pacsViewer.active.el.dataset.wl === '40,400'")  # the file's window
    assert "Im: 1/48" in page.locator(".viewport.active .ov.bl").inner_text()

    # Scroll: the wheel, the keys and the slider move through the series.
    box = page.locator(".viewport.active").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        page.mouse.wheel(0, 100)
    wait_shown(page, 3)
    page.keyboard.press("PageDown")
    wait_shown(page, 13)
    page.keyboard.press("ArrowUp")
    wait_shown(page, 12)
    page.keyboard.press("End")
    wait_shown(page, 47)
    page.locator(".viewport.active .slider").fill("24")
    wait_shown(page, 24)
    mid = page.evaluate(CANVAS_STATS, ACTIVE_CANVAS)
    assert mid["sig"] != first["sig"]  # another slice, other pixels
    page.wait_for_function("/Im: 25\\/48/.test(document.querySelector('.viewport.active .ov.bl').innerText)")
    loc = float(phantom_slice(reading_room, 24).SliceLocation)
    page.wait_for_function(
        f"document.querySelector('.viewport.active .ov.bl').innerText.includes('Loc: {loc:.1f} mm')")
    # Neighbours were prefetched while we looked.
    assert page.evaluate("pacsViewer.loader.stats.prefetched") > 10

    # Preset by number key: lung window (key 4).
    page.keyboard.press("4")
    page.wait_for_function("pacsViewer.active.el.dataset.wl === '-600,1500'")
    page.wait_for_function("pacsViewer.active.shown.url.includes('window=-600%2C1500')")
    lung = page.evaluate(CANVAS_STATS, ACTIVE_CANVAS)
    assert lung["sig"] != mid["sig"] and abs(lung["mean"] - mid["mean"]) > 5
    assert "W/L: 1500/-600" in page.locator(".viewport.active .ov.br").inner_text()
    # Preset from the menu: bone.
    page.select_option("#presets", "7")
    page.wait_for_function("pacsViewer.active.el.dataset.wl === '400,1800'")

    # Drag: lossy frames while moving, the lossless one at the end.
    lossy_before = page.evaluate("pacsViewer.active.counters.lossy")
    c = page.locator(".viewport.active").bounding_box()
    page.mouse.move(c["x"] + c["width"] / 2, c["y"] + c["height"] / 2)
    page.mouse.down()
    for i in range(1, 16):
        page.mouse.move(c["x"] + c["width"] / 2 - 8 * i, c["y"] + c["height"] / 2 + 4 * i)
        page.wait_for_timeout(25)
    page.wait_for_function(f"pacsViewer.active.counters.lossy > {lossy_before}")
    page.mouse.up()
    page.wait_for_function("pacsViewer.active.shown.lossy === false && pacsViewer.active.counters.shown > 0")
    wl = page.evaluate("pacsViewer.active.el.dataset.wl")
    center, width = (float(v) for v in wl.split(","))
    assert width < 1800 and center > 400  # narrower (left) and higher (down)
    assert "accept=image%2Fpng" in page.evaluate("pacsViewer.active.shown.url")
    save_screenshot(page, "viewer-ct-window")


def test_distance_probe_roi_and_angle(page: Any, reading_room: ReadingRoom) -> None:
    open_phantom(page, reading_room)
    page.click("[data-tool=distance]")
    # 200 pixels along a row at 1.4 mm per pixel (358.4 mm / 256): 280 mm.
    drag(page, to_client(page, 20.5, 128.5), to_client(page, 220.5, 128.5))
    page.wait_for_function("document.querySelectorAll('.viewport.active .measure-list li').length === 1")
    text = measurements(page)[0]
    assert text.endswith(" mm") and number(text) == pytest.approx(280.0, rel=0.01)
    # A vertical one uses the row spacing.
    drag(page, to_client(page, 128.5, 30.5), to_client(page, 128.5, 80.5))
    page.wait_for_function("document.querySelectorAll('.viewport.active .measure-list li').length === 2")
    assert number(measurements(page)[1]) == pytest.approx(70.0, rel=0.01)

    # Probe: the HU the file holds at that pixel (stored value + rescale intercept).
    ds = phantom_slice(reading_room, 0)
    expected = float(ds.pixel_array[6, 9]) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    page.click("[data-tool=probe]")
    p = to_client(page, 9.5, 6.5)
    page.mouse.click(p["x"], p["y"])
    page.wait_for_function(
        "[...document.querySelectorAll('.viewport.active .measure-list li')].some(li => li.innerText.includes('HU'))")
    probe = next(m for m in measurements(page) if "HU" in m)
    assert number(probe) == expected and "[9, 6]" in probe

    # Rectangle ROI: mean and SD of the same pixels, computed here from the file.
    page.click("[data-tool=rect]")
    drag(page, to_client(page, 100, 100), to_client(page, 140, 120))
    page.wait_for_function(
        "[...document.querySelectorAll('.viewport.active .measure-list li')].some(li => li.innerText.startsWith('mean'))")
    roi = next(m for m in measurements(page) if m.startswith("mean"))
    hu = ds.pixel_array[100:120, 100:140].astype(float) + float(ds.RescaleIntercept)
    assert number(roi.split("mean")[1]) == pytest.approx(hu.mean(), abs=0.06)
    assert number(roi.split("SD")[1]) == pytest.approx(hu.std(), abs=0.06)
    assert number(roi.split("area")[1]) == pytest.approx(40 * 20 * 1.4 * 1.4 / 100, abs=0.006)  # cm²

    # Angle: a right angle.
    page.click("[data-tool=angle]")
    drag(page, to_client(page, 60, 200), to_client(page, 120, 200))
    c = to_client(page, 120, 140)
    page.mouse.click(c["x"], c["y"])
    page.wait_for_function(
        "[...document.querySelectorAll('.viewport.active .measure-list li')].some(li => li.innerText.endsWith('°'))")
    assert number(next(m for m in measurements(page) if m.endswith("°"))) == pytest.approx(90.0, abs=0.1)
    save_screenshot(page, "viewer-ct-measurements")

    # Measurements stay with their slice.
    page.keyboard.press("ArrowDown")
    wait_shown(page, 1)
    assert measurements(page) == []
    page.keyboard.press("ArrowUp")
    wait_shown(page, 0)
    assert len(measurements(page)) == 5


def test_uncalibrated_image_says_so(page: Any, reading_room: ReadingRoom) -> None:
    rows = reading_room.api("/api/worklist?patient_id=11-05-25&page_size=5")["rows"]
    page.goto(reading_room.url(f"/viewer/{rows[0]['study_uid']}"))  # US without Pixel Spacing
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    page.wait_for_function("document.querySelector('.viewport.active .ov.br').innerText.includes('uncalibrated')")
    page.click("[data-tool=distance]")
    drag(page, to_client(page, 10, 10), to_client(page, 110, 10))
    page.wait_for_function("document.querySelectorAll('.viewport.active .measure-list li').length === 1")
    text = measurements(page)[0]
    assert text == "100.0 px (uncalibrated)"


def test_series_panel_click_drag_and_multiframe(page: Any, reading_room: ReadingRoom) -> None:
    cr = reading_room.api("/api/worklist?patient_id=77654033&modality=CR")["rows"][0]
    page.goto(reading_room.url(f"/viewer/{cr['study_uid']}"))
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    items = page.locator(".series-item")
    assert items.count() == 3
    uids = [items.nth(i).get_attribute("data-series") for i in range(3)]
    assert page.evaluate("pacsViewer.active.series.series_uid") == uids[0]
    items.nth(1).click()
    page.wait_for_function(f"pacsViewer.active.el.dataset.series === '{uids[1]}'")
    page.click("[data-layout='1x2']")
    page.wait_for_selector(".viewport[data-n='1']:not([hidden])")
    items.nth(2).drag_to(page.locator(".viewport[data-n='1']"))
    page.wait_for_function(
        f"document.querySelector(\".viewport[data-n='1']\").dataset.series === '{uids[2]}'")
    assert page.locator(".series-item.current").get_attribute("data-series") == uids[2]

    # A 30-frame ultrasound: every frame is a slice of the stack.
    us = reading_room.api("/api/worklist?patient_id=204")["rows"][0]
    page.goto(reading_room.url(f"/viewer/{us['study_uid']}"))
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    assert page.evaluate("pacsViewer.active.slices.length") == 30
    page.keyboard.press("End")
    wait_shown(page, 29)
    assert "(30/30)" in page.locator(".viewport.active .ov.bl").inner_text()
    assert page.evaluate("pacsViewer.active.shown.url").split("?")[0].endswith("/frames/30/rendered")


def test_view_tools_tags_layout_cine_and_film(page: Any, reading_room: ReadingRoom) -> None:
    open_phantom(page, reading_room)
    base = page.evaluate(CANVAS_STATS, ACTIVE_CANVAS)
    page.click("[data-action=invert]")
    inverted = page.evaluate(CANVAS_STATS, ACTIVE_CANVAS)
    assert inverted["mean"] > base["mean"] + 40  # mostly dark air becomes light
    page.keyboard.press("i")
    page.click("[data-action=one]")
    page.wait_for_function("document.querySelector('.viewport.active .ov.br').innerText.includes('Zoom: 100%')")
    page.click("[data-action=fit]")
    page.click("[data-action=rotate]")
    assert page.evaluate("pacsViewer.active.view.rot") == 90
    page.click("[data-action=reset]")
    assert page.evaluate("pacsViewer.active.view.rot") == 0

    # Tag browser for the instance on screen.
    page.click("[data-action=tags]")
    page.wait_for_selector("#tag-list td.kw")
    page.fill("#tag-filter", "PatientName")
    value = page.locator("#tag-list tr", has_text="PatientName").locator("td.val").inner_text()
    assert value == "Nguyễn^Thị Lan"
    page.click("#tags [data-action=tags]")

    # 2x2 layout: four viewports, each with an image.
    page.click("[data-layout='2x2']")
    page.wait_for_function("pacsViewer.visible().every(v => v.counters.shown > 0)")
    assert page.locator(".viewport:not([hidden])").count() == 4
    second = page.evaluate(CANVAS_STATS, ".viewport[data-n='3'] canvas")
    assert second["std"] > 20
    page.click("[data-layout='1x1']")

    # Cine: frames advance on their own, and stop.
    page.select_option("#fps", "30")
    start = shown_index(page)
    page.click("[data-action=cine]")
    page.wait_for_function(f"Number(pacsViewer.active.el.dataset.shown) >= {start + 5}")
    page.click("[data-action=cine]")
    stopped = page.evaluate("pacsViewer.active.index")
    page.wait_for_timeout(300)
    assert page.evaluate("pacsViewer.active.index") == stopped
    wait_shown(page, stopped)

    # Film sheet: the current image, exported as a PNG with the warning on it.
    page.click("[data-action=addFilm]")
    assert page.locator("#film-list .film-item").count() == 1
    with page.expect_download() as dl:
        page.click("#film-export")
    path = Path(dl.value.path())
    assert dl.value.suggested_filename.startswith("film-CT-SYN-0007")
    from PIL import Image

    sheet = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert sheet.shape[1] == 1654
    red = (sheet[..., 0] > 150) & (sheet[..., 1] < 60) & (sheet[..., 2] < 60)
    assert red[:100].any() and red[-100:].any()  # "NOT FOR DIAGNOSIS" at top and bottom
    image_area = sheet[190:1700, 60:1594]
    assert image_area.std() > 20  # the CT itself is on the sheet
    Image.open(path).save(Path(__file__).resolve().parents[2] / "test-artifacts" / "film-sheet.png")


def test_phone_layout_with_touch(browser: Any, reading_room: ReadingRoom) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True, locale="vi-VN")
    page = context.new_page()
    sign_in(page, reading_room, f"/viewer/{reading_room.phantom_study}")
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    vp = page.locator(".viewport.active").bounding_box()
    panel = page.locator("#series").bounding_box()
    assert vp["width"] >= 370 and panel["y"] >= vp["y"] + vp["height"] - 1  # series strip below
    assert panel["width"] >= 370 and panel["height"] < 120
    stats = page.evaluate(CANVAS_STATS, ACTIVE_CANVAS)
    assert stats["w"] >= 740 and stats["std"] > 20  # drawn at device resolution, not blank
    toolbar = page.locator("#toolbar").bounding_box()
    assert toolbar["width"] <= 390  # scrolls sideways instead of widening the page
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    # Pinch zoom with two fingers (pointer events, as a touch screen sends them).
    before = page.evaluate("pacsViewer.active.scale()")
    page.evaluate("""() => {
      const el = document.querySelector('.viewport.active');
      const r = el.getBoundingClientRect(), cx = r.left + r.width / 2, cy = r.top + r.height / 2;
      const ev = (type, id, x) => el.dispatchEvent(new PointerEvent(type, {pointerId: id,
        pointerType: 'touch', clientX: x, clientY: cy, bubbles: true, isPrimary: id === 1}));
      ev('pointerdown', 1, cx - 40); ev('pointerdown', 2, cx + 40);
      for (let i = 1; i <= 10; i++) { ev('pointermove', 1, cx - 40 - 6 * i); ev('pointermove', 2, cx + 40 + 6 * i); }
      ev('pointerup', 1, cx - 100); ev('pointerup', 2, cx + 100);
    }""")
    after = page.evaluate("pacsViewer.active.scale()")
    assert after == pytest.approx(before * 200 / 80, rel=0.02)

    # One finger with the stack tool scrolls slices.
    page.tap("[data-tool=stack]")
    page.evaluate("""() => {
      const el = document.querySelector('.viewport.active');
      const r = el.getBoundingClientRect(), cx = r.left + r.width / 2, y0 = r.top + 40;
      const ev = (type, y) => el.dispatchEvent(new PointerEvent(type, {pointerId: 7,
        pointerType: 'touch', clientX: cx, clientY: y, bubbles: true, isPrimary: true}));
      ev('pointerdown', y0); for (let i = 1; i <= 10; i++) ev('pointermove', y0 + 20 * i); ev('pointerup', y0 + 200);
    }""")
    page.wait_for_function("Number(pacsViewer.active.el.dataset.shown) > 5")
    assert "Ảnh:" in page.locator(".viewport.active .ov.bl").inner_text()  # Vietnamese overlays
    save_screenshot(page, "viewer-phone")
    context.close()


def test_language_follows_the_browser_and_the_switch_is_remembered(
    browser: Any, reading_room: ReadingRoom,
) -> None:
    context = browser.new_context(locale="vi-VN", viewport={"width": 1280, "height": 800})
    page = context.new_page()
    sign_in(page, reading_room)
    page.wait_for_selector("#studies tbody td.name a")
    assert page.locator("h1.title").inner_text() == "Danh sách ca chụp"
    assert page.locator("html").get_attribute("lang") == "vi"
    page.fill("input[name=name]", "nguyen thi lan")
    page.wait_for_function("document.querySelectorAll('#studies tbody td.name a').length === 1")
    ds = phantom_slice(reading_room, 0)
    y, m, d = int(ds.StudyDate[:4]), int(ds.StudyDate[4:6]), int(ds.StudyDate[6:])
    date_cell = page.locator("#studies tbody tr td").nth(3).inner_text()
    assert date_cell.startswith(f"{d}/{m}/{y % 100:02d}")  # Vietnamese: day first
    save_screenshot(page, "worklist-vietnamese")

    page.select_option("#lang", "en")
    assert page.locator("h1.title").inner_text() == "Worklist"
    date_cell = page.locator("#studies tbody tr td").nth(3).inner_text()
    # English words, but a browser set to Vietnam keeps the day first (en-GB order).
    assert date_cell.startswith(f"{d:02d}/{m:02d}/{y}")
    page.reload()
    page.wait_for_selector("#studies tbody td.name a")
    assert page.locator("h1.title").inner_text() == "Worklist"  # remembered
    assert page.locator("html").get_attribute("lang") == "en"  # the server knew it too (cookie)
    page.select_option("#lang", "vi")
    assert page.locator("button[type=submit].primary").inner_text() == "Tìm kiếm"
    context.close()


def test_an_expired_session_goes_back_to_sign_in(page: Any, reading_room: ReadingRoom) -> None:
    page.wait_for_selector("#studies tbody td.name a")
    page.context.clear_cookies()
    page.fill("input[name=name]", "nguyen")
    page.wait_for_url(re.compile(r"/login\?next="))
    assert "NGUY" not in page.content()


def test_a_new_study_appears_without_reloading(browser: Any, reading_room: ReadingRoom,
                                               tmp_path: Path) -> None:
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    page.clock.install()
    sign_in(page, reading_room)
    page.wait_for_selector("#studies tbody td.name a")
    before = page.locator("#studies tbody tr").count()
    assert "VŨ THỊ MAI" not in page.locator("#studies tbody td.name").all_inner_texts()
    reading_room.import_files(make_extra_study(tmp_path / "new", seed=99, name="Vũ^Thị Mai",
                                               patient_id="NEW-0099"))
    with page.expect_response(lambda r: "/api/worklist" in r.url):
        page.clock.run_for(16_000)  # one poll interval (15 s) later
    page.wait_for_selector("#studies tbody tr.new")
    assert page.locator("#studies tbody tr.new td.name").inner_text() == "VŨ THỊ MAI"
    assert page.locator("#studies tbody tr").count() == min(before + 1, 50)
    assert page.locator("#fresh").inner_text() == "1 new"
    context.close()
