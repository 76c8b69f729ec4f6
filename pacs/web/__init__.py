"""The HTTP side: a Flask application factory over the same services as the DICOM side."""

from pacs.web.app import create_app

__all__ = ["create_app"]
