"""Flask application factory: health/status now; viewer and DICOMweb blueprints later."""

from __future__ import annotations

import html
import logging
from typing import Any

from flask import Flask, jsonify, render_template_string

from pacs import __version__
from pacs.config import Settings
from pacs.errors import PacsError, StorageUnavailable
from pacs.store.blobs import BlobStore
from pacs.store.index import Index

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
</body></html>
"""


def create_app(
    settings: Settings, index: Index, blobs: BlobStore, *, dicom_port: int | None = None,
    test_config: dict[str, Any] | None = None,
) -> Flask:
    """Build the app around already-open services (one set per process)."""
    app = Flask(__name__)
    app.config.update(JSON_AS_ASCII=False)
    if test_config:
        app.config.update(test_config)
    app.extensions["pacs"] = {"settings": settings, "index": index, "blobs": blobs}

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
    def status_page() -> Any:
        h = health()
        body = render_template_string(
            STATUS_PAGE, health=h, s=settings, version=__version__,
            dicom_port=dicom_port if dicom_port is not None else settings.dicom_port,
        )
        return body, (200 if h["ok"] else 503)

    @app.errorhandler(PacsError)
    def pacs_error(exc: PacsError) -> Any:
        code = 503 if isinstance(exc, StorageUnavailable) else 400
        return jsonify(error=html.escape(str(exc))), code

    return app
