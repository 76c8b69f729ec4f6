"""Shared study links (issue #7, remote consultation) in a real browser: Debian's headless
Chromium driven by Playwright against ``pacs serve`` with the samples and the CT phantom.

A radiologist creates a link from the viewer (dialog: URL, copy, QR code), sees it in the
study's link list, revokes it there and reads the consultation notes that come back. The
recipient has no account and often a phone: PIN page, the same viewer scoped to the study
under /s/<token>, a banner with the expiry, download only when allowed, a notes panel.

Screenshots go to test-artifacts/share-*.png for people to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.browser import PASSWORD, ReadingRoom, save_screenshot

pytestmark = pytest.mark.slow

CANVAS_STATS = """(sel) => {
  const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sq = 0, n = 0;
  for (let i = 0; i < d.length; i += 16) {
    const y = (d[i] + d[i + 1] + d[i + 2]) / 3;
    sum += y; sq += y * y; n += 1;
  }
  const mean = sum / n;
  return { mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)) };
}"""
ACTIVE_CANVAS = ".viewport.active canvas"
PHANTOM_NAMES = ("NGUYỄN THỊ LAN", "Nguyễn", "NGUY", "Thị Lan")
PHANTOM_ID = "CT-SYN-0007"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True}


def sign_in(page: Any, room: ReadingRoom, path: str, username: str | None = None,
            password: str | None = None) -> None:
    page.goto(room.url(path))
    assert "/login" in page.url
    page.fill("#u", username or room.username)
    page.fill("#p", password or room.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(path) + r"(\?.*)?$"))


def watch_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


@pytest.fixture
def radiologist(browser: Any, reading_room: ReadingRoom) -> Iterator[Any]:
    """A signed-in radiologist on the phantom's viewer page (desktop, English)."""
    context = browser.new_context(viewport={"width": 1366, "height": 800}, locale="en-US")
    page = context.new_page()
    errors = watch_errors(page)
    sign_in(page, reading_room, f"/viewer/{reading_room.phantom_study}")
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def guest(browser: Any) -> Iterator[Any]:
    """Someone with the link and no account, on a phone (390x844, touch)."""
    context = browser.new_context(**PHONE, locale="en-US")
    page = context.new_page()
    errors = watch_errors(page)
    yield page
    context.close()
    assert not errors, errors


def create_link(page: Any, *, label: str, pin: str = "", deidentify: bool = False,
                download: bool = False, notes: bool = True, shot: str = "") -> str:
    """Fill the share dialog on the viewer page; returns the link's absolute URL."""
    page.click("#share-btn")
    dialog = page.locator("#share-dialog")
    dialog.wait_for(state="visible")
    page.fill("#share-form input[name=label]", label)
    assert page.locator("#share-form select[name=days]").input_value() == "7"  # default: a week
    if pin:
        page.fill("#share-form input[name=pin]", pin)
    page.locator("#share-form input[name=deidentify]").set_checked(deidentify)
    page.locator("#share-form input[name=download]").set_checked(download)
    page.locator("#share-form input[name=notes]").set_checked(notes)
    with page.expect_response(lambda r: r.url.endswith("/shares") and r.request.method == "POST") as resp:
        page.click("#share-create")
    assert resp.value.status == 201, resp.value.text()
    page.locator("#share-result").wait_for(state="visible")
    url = page.locator("#share-url").input_value()
    assert re.search(r"/s/[\w-]{16,}$", url), url
    # The QR code: the server's SVG, shown as an image (copy, save, print).
    page.wait_for_function("document.querySelector('#share-qr img')?.naturalWidth > 0")
    assert page.locator("#share-qr img").get_attribute("src").startswith("data:image/svg+xml")
    assert page.locator("#share-qr-save").get_attribute("href").startswith("data:image/svg+xml")
    if shot:
        save_screenshot(page, shot)
    page.click("#share-done")
    dialog.wait_for(state="hidden")
    return url  # type: ignore[no-any-return]


def open_links_panel(page: Any) -> None:
    if page.locator("#shares-panel").is_hidden():
        with page.expect_response(lambda r: r.url.endswith("/shares") and r.request.method == "GET"):
            page.click("#shares-btn")
    page.locator("#shares-panel").wait_for(state="visible")


def share_item(page: Any, label: str) -> Any:
    return page.locator("#share-list .share-item", has=page.locator(".share-label", has_text=label))


def wait_viewer(page: Any) -> None:
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    stats = page.evaluate(CANVAS_STATS, ACTIVE_CANVAS)
    assert stats["std"] > 20 and 5 < stats["mean"] < 200, stats  # an image, not a blank canvas


def fetched_paths(page: Any) -> list[str]:
    return page.evaluate(  # type: ignore[no-any-return]
        "performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname)")


# -- the radiologist creates, the guest opens ---------------------------------------------


def test_link_with_pin_opens_on_a_phone(radiologist: Any, guest: Any, reading_room: ReadingRoom) -> None:
    page = radiologist
    url = create_link(page, label="BS. Hùng · tim mạch", pin="2468", download=True, shot="share-dialog")
    open_links_panel(page)
    item = share_item(page, "BS. Hùng · tim mạch")
    item.wait_for()
    text = item.inner_text()
    assert "active" in text and "PIN" in text and "download" in text and "0 views" in text
    assert "thu" in text  # the creator (user name)
    save_screenshot(page, "share-links-panel")

    # The guest: the PIN page first, no data.
    resp = guest.goto(url)
    assert resp.status in (200, 401)
    assert guest.locator("#grid").count() == 0
    assert "NGUY" not in guest.content() and PHANTOM_ID not in guest.content()
    pin = guest.locator("input[name=pin]")
    pin.fill("1111")
    guest.locator("button[type=submit]").click()
    guest.wait_for_load_state()
    assert guest.locator("#grid").count() == 0
    assert guest.locator("[role=alert]").count() == 1
    save_screenshot(guest, "share-phone-pin-wrong")
    guest.locator("input[name=pin]").fill("2468")
    guest.locator("button[type=submit]").click()
    wait_viewer(guest)

    # The same viewer, scoped to the study: banner, no worklist, no share button.
    banner = guest.locator("#share-banner")
    assert banner.is_visible()
    assert re.search(r"Shared study · expires \S+", banner.inner_text())
    assert "de-identified" not in banner.inner_text()
    assert guest.locator("a[href*='/worklist']").count() == 0
    assert guest.locator("#share-btn, #shares-btn, .logout").count() == 0
    assert guest.locator("#share-download").is_visible()
    assert guest.locator("#share-download").get_attribute("href").endswith("/download")
    assert guest.evaluate("document.documentElement.scrollWidth") <= 390
    # Every image and API call went through the link (nothing needs a session).
    token_path = "/s/" + url.rsplit("/s/", 1)[1]
    paths = fetched_paths(guest)
    data = [p for p in paths if "/api/" in p or "/dicomweb/" in p]
    assert data and all(p.startswith(token_path + "/") for p in data), data
    # Scrolling on the phone still loads slices through the link.
    guest.keyboard.press("End")
    guest.wait_for_function(f"pacsViewer.active.el.dataset.shown === '{reading_room.phantom_slices - 1}'")
    save_screenshot(guest, "share-phone-viewer")

    # The list counts the visit.
    page.click("#notes-refresh")
    page.wait_for_function(
        "[...document.querySelectorAll('#share-list .share-item')].some((e) => /[1-9]\\d* views?/.test(e.innerText))")


def test_deidentified_link_shows_no_patient(radiologist: Any, browser: Any, reading_room: ReadingRoom) -> None:
    url = create_link(radiologist, label="Anonymous teaching", deidentify=True, download=False)
    context = browser.new_context(viewport={"width": 1366, "height": 800}, locale="en-US")
    page = context.new_page()
    errors = watch_errors(page)
    page.goto(url)
    wait_viewer(page)
    banner = page.locator("#share-banner").inner_text()
    assert "Shared study" in banner and "de-identified" in banner
    assert page.locator("#share-download").count() == 0  # download not allowed
    # Overlay and tag browser: neither the name nor the patient ID anywhere on the page.
    page.click("[data-action=tags] >> nth=0")
    page.wait_for_function("document.querySelectorAll('#tag-list tr').length > 20")
    save_screenshot(page, "share-deidentified")
    html = page.content()
    body = page.locator("body").inner_text()
    for secret in (*PHANTOM_NAMES, PHANTOM_ID):
        assert secret not in html and secret not in body, secret
    assert reading_room.phantom_study not in html  # pseudonymous UIDs
    assert page.request.get(url + "/download").status in (403, 404)
    context.close()
    assert not errors, errors


def test_consultation_note_round_trip(radiologist: Any, browser: Any, reading_room: ReadingRoom) -> None:
    url = create_link(radiologist, label="Hội chẩn BV Chợ Rẫy")
    context = browser.new_context(**PHONE, locale="vi-VN")
    guest = context.new_page()
    errors = watch_errors(guest)
    guest.goto(url)
    wait_viewer(guest)
    assert guest.locator("#share-banner").inner_text().startswith("Ca chụp được chia sẻ · hết hạn")
    guest.click("#share-notes-btn")
    guest.locator("#notes-panel").wait_for(state="visible")
    guest.wait_for_selector("#note-list .empty")
    guest.fill("#note-author", "BS. Trần Quốc Hùng")
    guest.fill("#note-text", "Không thấy tổn thương khu trú. Đồng ý với kết luận.")
    with guest.expect_response(lambda r: r.url.endswith("/notes") and r.request.method == "POST") as resp:
        guest.click("#note-form button[type=submit]")
    assert resp.value.status == 201, resp.value.text()
    guest.wait_for_selector("#note-list .note")
    assert "BS. Trần Quốc Hùng" in guest.locator("#note-list").inner_text()
    assert guest.locator("#note-text").input_value() == ""  # ready for the next one
    box = guest.locator("#notes-panel").bounding_box()
    assert box["width"] <= 390 and box["y"] + box["height"] <= 844
    save_screenshot(guest, "share-phone-notes")
    context.close()
    assert not errors, errors

    # The radiologist reads it on the study page (with the link's label).
    page = radiologist
    open_links_panel(page)
    page.wait_for_function("document.querySelector('#note-list').innerText.includes('Đồng ý với kết luận')")
    note = page.locator("#note-list .note", has_text="Đồng ý với kết luận")
    assert "BS. Trần Quốc Hùng" in note.inner_text() and "Hội chẩn BV Chợ Rẫy" in note.inner_text()
    save_screenshot(page, "share-notes-study-page")
    # A fresh page: the ✎ button counts the notes.
    page.reload()
    page.wait_for_function("document.querySelector('#notes-badge') && !document.querySelector('#notes-badge').hidden")
    assert int(page.locator("#notes-badge").inner_text()) >= 1


def test_revoke_from_the_study_page(radiologist: Any, browser: Any, reading_room: ReadingRoom) -> None:
    page = radiologist
    url = create_link(page, label="Revoke me")
    context = browser.new_context(locale="en-US")
    guest = context.new_page()
    guest.goto(url)
    wait_viewer(guest)

    open_links_panel(page)
    item = share_item(page, "Revoke me")
    item.wait_for()
    button = item.locator("button.revoke")
    button.click()
    assert button.inner_text() == "Revoke now?"  # two clicks, no native confirm box
    with page.expect_response(lambda r: "/revoke" in r.url) as resp:
        button.click()
    assert resp.value.status == 200
    page.wait_for_function(
        "[...document.querySelectorAll('#share-list .share-item.state-revoked .share-label')]"
        ".some((e) => e.textContent === 'Revoke me')")
    assert share_item(page, "Revoke me").locator("button.revoke").count() == 0
    save_screenshot(page, "share-revoked")

    # The guest still on the viewer is sent back to the link, now its "gone" page, by the next
    # request (here: the tag browser's).
    guest.keyboard.press("t")
    guest.wait_for_selector("main[role=alert][data-status='410']")
    assert guest.locator("#grid").count() == 0
    # Opening the link afresh: 410 Gone, no viewer.
    again = guest.goto(url)
    assert again.status == 410
    assert guest.locator("#grid").count() == 0
    save_screenshot(guest, "share-gone")
    context.close()


def test_link_expires_while_open(radiologist: Any, browser: Any, reading_room: ReadingRoom) -> None:
    """A link made to last 6 seconds (the server's real clock; the controllable clock is in
    tests/web/test_share.py): it opens, then once expired the open viewer and a fresh visit
    both end on the 410 page."""
    page = radiologist
    made = page.evaluate("""async (study) => {
      const res = await fetch(`/api/studies/${study}/shares`, {method: "POST",
        headers: {"Content-Type": "application/json", "X-Requested-With": "pacs-viewer",
                  "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content},
        body: JSON.stringify({days: 6 / 86400, label: "Six seconds"})});
      return {status: res.status, body: await res.json()};
    }""", reading_room.phantom_study)
    assert made["status"] == 201, made
    context = browser.new_context(locale="en-US")
    guest = context.new_page()
    guest.goto(reading_room.url(made["body"]["url"]))
    wait_viewer(guest)
    guest.wait_for_timeout(7000)
    guest.keyboard.press("t")  # the tag browser asks the server: the link has expired since
    guest.wait_for_selector("main[role=alert][data-status='410']")
    again = guest.goto(reading_room.url(made["body"]["url"]))
    assert again.status == 410
    assert "expired" in guest.locator("body").inner_text()
    context.close()
    open_links_panel(page)
    page.wait_for_function(
        "[...document.querySelectorAll('#share-list .share-item.state-expired .share-label')]"
        ".some((e) => e.textContent === 'Six seconds')")


def test_phone_dialog_and_roles(browser: Any, reading_room: ReadingRoom) -> None:
    """The share dialog fits a phone; a referring doctor has no share buttons (and gets 403)."""
    context = browser.new_context(**PHONE, locale="vi-VN")
    page = context.new_page()
    errors = watch_errors(page)
    sign_in(page, reading_room, f"/viewer/{reading_room.phantom_study}")
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    page.locator("#share-btn").scroll_into_view_if_needed()
    page.click("#share-btn")
    page.locator("#share-dialog").wait_for(state="visible")
    assert page.locator("#share-dialog h2").first.inner_text() == "Chia sẻ ca chụp này"
    box = page.locator("#share-dialog").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
    create = page.locator("#share-create").bounding_box()
    assert create["y"] + create["height"] <= 844  # reachable without zooming out
    save_screenshot(page, "share-phone-dialog")
    page.keyboard.press("Escape")
    page.locator("#share-dialog").wait_for(state="hidden")
    context.close()
    assert not errors, errors

    add = reading_room.server.pacs("user", "add", "gioi", "--role", "referrer", "--display-name",
                                  "BS. Giới thiệu", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert add.returncode == 0 or "exists" in (add.stdout + add.stderr), add.stdout + add.stderr
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    sign_in(page, reading_room, f"/viewer/{reading_room.phantom_study}", "gioi", PASSWORD)
    page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0")
    assert page.locator("#share-btn, #shares-btn, #share-dialog").count() == 0
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    res = page.request.post(reading_room.url(f"/api/studies/{reading_room.phantom_study}/shares"),
                            data={"days": 7}, headers={"X-CSRF-Token": token,
                                                       "X-Requested-With": "pacs-viewer"})
    assert res.status == 403
    context.close()
