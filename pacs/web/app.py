"""Flask application factory: health/status, sign-in, rendering and the reading room (ui)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, redirect, render_template_string, request, url_for
from werkzeug.exceptions import HTTPException

from pacs import __version__
from pacs.config import Settings
from pacs.errors import InvalidInstance, NotFound, PacsError, StorageUnavailable
from pacs.frames import FrameSource
from pacs.render import NotRenderable
from pacs.store.blobs import BlobStore
from pacs.store.index import Index
from pacs.store.users import Users
from pacs.web import dicomweb, rendered, ui
from pacs.web import admin
from pacs.web import share
from pacs.web.auth import current_user, install as install_auth

log = logging.getLogger(__name__)

STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mini-PACS status</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:40rem}
td,th{padding:.2rem 1rem .2rem 0;text-align:left}.ok{color:#070}.bad{color:#b00}</style>
</head><body>
<h1>mini-PACS</h1>
<p class="{{ 'ok' if health.ok else 'bad' }}">{{ 'Running' if health.ok else 'Degraded' }}</p>
<table>
<tr><th>DICOM</th><td>AE title {{ s.ae_title }}, port {{ dicom_port }}</td></tr>
<tr><th>Index</th><td>{{ health.index }}</td></tr>
<tr><th>Blob store</th><td>{{ health.blobs }}</td></tr>
{% if health.counts %}
<tr><th>Patients</th><td>{{ health.counts.patients }}</td></tr>
<tr><th>Studies</th><td>{{ health.counts.studies }}</td></tr>
<tr><th>Series</th><td>{{ health.counts.series }}</td></tr>
<tr><th>Instances</th><td>{{ health.counts.instances }}</td></tr>
<tr><th>Stored</th><td>{{ '%.1f' % (health.counts.bytes / 1048576) }} MiB</td></tr>
{% endif %}
<tr><th>Version</th><td>{{ version }}</td></tr>
</table>
<p><a href="/login?next=/worklist">Sign in · Đăng nhập</a></p>
</body></html>
"""


def status_for(exc: PacsError) -> int:
    """The HTTP status of a domain error."""
    if isinstance(exc, StorageUnavailable):
        return 503
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, (NotRenderable, InvalidInstance)):
        return 422  # the request was fine; the stored object cannot be rendered
    return 400


def create_app(
    settings: Settings, index: Index, blobs: BlobStore, *, dicom_port: int | None = None,
    test_config: dict[str, Any] | None = None,
) -> Flask:
    """Build the app around already-open services (one set per process)."""
    app = Flask(__name__)
    app.config.update(JSON_AS_ASCII=False)
    if test_config:
        app.config.update(test_config)
    app.extensions["pacs"] = {
        "settings": settings, "index": index, "blobs": blobs,
        "frames": FrameSource(index, blobs, settings.render_cache_mb * 1024 * 1024),
    }
    install_auth(
        app, Users(index, max_failures=settings.login_max_failures,
                   lockout_minutes=settings.login_lockout_minutes),
        secure_cookies=settings.public_url.startswith("https://"),
        session_hours=settings.session_hours,
    )
    app.register_blueprint(rendered.bp)
    dicomweb.install(app)  # QIDO-RS, WADO-RS, STOW-RS, WADO-URI (after rendered: no route overlaps)
    app.register_blueprint(ui.bp)
    admin.install(app)  # /admin pages; can_share / can_admin for every template
    share.install(app)  # /s/<token> links (prefix middleware + guard hook), /api/…/shares

    def health() -> dict[str, Any]:
        out: dict[str, Any] = {"ok": True, "version": __version__}
        try:
            c = index.counts()
            out["counts"] = {
                "patients": c.patients, "studies": c.studies, "series": c.series,
                "instances": c.instances, "bytes": c.bytes,
            }
            out["index"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            out["ok"], out["index"], out["counts"] = False, f"unavailable: {type(exc).__name__}", None
        try:
            blobs.ping()
            out["blobs"] = "ok"
        except StorageUnavailable as exc:
            out["ok"], out["blobs"] = False, f"unavailable: {exc}"
        return out

    @app.get("/health")
    def health_json() -> Any:
        h = health()
        return jsonify(h), (200 if h["ok"] else 503)

    @app.get("/")
    def home() -> Any:
        """Signed-in users go to the worklist; everyone else sees the public status page."""
        if current_user() is not None:
            return redirect(url_for("ui.worklist_page"))
        return status_page()

    @app.get("/status")
    def status_page() -> Any:
        h = health()
        body = render_template_string(
            STATUS_PAGE, health=h, s=settings, version=__version__,
            dicom_port=dicom_port if dicom_port is not None else settings.dicom_port,
        )
        return body, (200 if h["ok"] else 503)

    @app.errorhandler(PacsError)
    def pacs_error(exc: PacsError) -> Any:
        """Domain errors to HTTP, once (the message is for the user; never patient data)."""
        code = status_for(exc)
        if code >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc)
        return jsonify(error=str(exc)), code

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        # JSON for API clients, the plain page for browsers.
        if request.accept_mimetypes.accept_html and not request.path.startswith(("/dicomweb", "/api/")):
            return exc
        return jsonify(error=exc.description or exc.name), exc.code or 500

    return app
