"""The services of the app serving the current request (``app.extensions["pacs"]``).

One typed accessor each, for every blueprint: the app factory (:func:`pacs.web.app.create_app`)
and the ``install`` functions of the blueprints fill the dictionary once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import current_app

if TYPE_CHECKING:
    from pacs.config import Settings
    from pacs.frames import FrameSource
    from pacs.store.blobs import BlobStore
    from pacs.store.index import Index
    from pacs.store.shares import Shares
    from pacs.store.users import Users


def services() -> dict[str, Any]:
    return current_app.extensions["pacs"]  # type: ignore[no-any-return]


def settings() -> Settings:
    return services()["settings"]  # type: ignore[no-any-return]


def index() -> Index:
    return services()["index"]  # type: ignore[no-any-return]


def blobs() -> BlobStore:
    return services()["blobs"]  # type: ignore[no-any-return]


def frames() -> FrameSource:
    return services()["frames"]  # type: ignore[no-any-return]


def users() -> Users:
    return services()["users"]  # type: ignore[no-any-return]


def shares() -> Shares:
    return services()["shares"]  # type: ignore[no-any-return]
