"""The remote AE registry: DICOM peers we know by name (C-MOVE destinations, restricted callers).

Two sources, merged: rows in the index database (``pacs ae add``, visible to every
receiver process at its next request, so no restart is needed) and the ``remote_aes``
setting (``PACS_REMOTE_AES="PACS2=PACS2@10.0.0.5:104,WS=WORKSTATION@ws1:11112"``).
A database entry wins over a settings entry with the same name.

The ``may_store`` / ``may_query`` / ``may_retrieve`` flags restrict what a peer may ask
when it is the *calling* AE; callers that are not registered are not restricted.
Settings entries allow everything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, OperationalError

from pacs.errors import ConfigError, PacsError, StorageUnavailable
from pacs.store.index import Index
from pacs.store.models import RemoteAE

log = logging.getLogger(__name__)


class RegistryError(PacsError):
    """A registry change that cannot be made (bad value, name already taken)."""


@dataclass(frozen=True)
class Peer:
    """One known remote AE, as the SCP and the CLI see it."""

    name: str
    ae_title: str
    host: str
    port: int
    may_store: bool = True
    may_query: bool = True
    may_retrieve: bool = True
    #: ``database`` (``pacs ae add``) or ``settings`` (``remote_aes``).
    source: str = "database"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


def check_ae_title(title: str) -> str:
    """Validate an AE title (PS3.5 AE VR: 1-16 characters, no backslash or control characters)."""
    title = title.strip()
    if not title or len(title) > 16 or "\\" in title or not title.isascii() or not title.isprintable():
        raise RegistryError(f"AE title {title!r} must be 1-16 ASCII characters without backslash")
    return title


def check_port(port: int | str) -> int:
    try:
        value = int(port)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"port {port!r} is not a number") from exc
    if not 1 <= value <= 65535:
        raise RegistryError(f"port {value} must be 1-65535")
    return value


def parse_remote_aes(text: str) -> list[Peer]:
    """Parse the ``remote_aes`` setting: ``NAME=AET@HOST:PORT`` entries separated by commas.

    ``NAME=`` may be left out (the AE title is the name); an IPv6 host goes in brackets
    (``PEER=AET@[::1]:104``). Raises :class:`~pacs.errors.ConfigError` on a bad entry.
    """
    peers: list[Peer] = []
    for entry in (e.strip() for e in text.replace("\n", ",").split(",")):
        if not entry:
            continue
        try:
            name, _, target = entry.rpartition("=")
            aet, sep, hostport = target.rpartition("@")
            host, colon, port = hostport.rpartition(":")
            if not sep or not colon:
                raise RegistryError("expected NAME=AET@HOST:PORT")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if not host:
                raise RegistryError("the host is empty")
            aet = check_ae_title(aet)
            peers.append(Peer(name=name.strip() or aet, ae_title=aet, host=host,
                              port=check_port(port), source="settings"))
        except RegistryError as exc:
            raise ConfigError(f"setting remote_aes: bad entry {entry!r}: {exc}") from exc
    return peers


def _peer(row: RemoteAE) -> Peer:
    return Peer(name=row.name, ae_title=row.ae_title, host=row.host, port=row.port,
                may_store=row.may_store, may_query=row.may_query,
                may_retrieve=row.may_retrieve, source="database")


class AERegistry:
    """Known peers from the database and the settings; every look-up reads the database.

    One indexed query per DIMSE request is cheap next to the association itself, and it
    is what makes ``pacs ae add`` / ``remove`` take effect at once in every process.
    """

    def __init__(self, index: Index, configured: str | list[Peer] = "") -> None:
        self._index = index
        self._configured = (
            parse_remote_aes(configured) if isinstance(configured, str) else list(configured)
        )

    def _rows(self, *where: object) -> list[Peer]:
        try:
            with self._index.session() as s:
                rows = s.execute(select(RemoteAE).where(*where).order_by(RemoteAE.name)).scalars()
                return [_peer(r) for r in rows]
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc

    def peers(self) -> list[Peer]:
        """Every known peer, database entries first taking precedence by name."""
        stored = self._rows()
        names = {p.name for p in stored}
        merged = stored + [p for p in self._configured if p.name not in names]
        return sorted(merged, key=lambda p: p.name)

    def get(self, name: str) -> Peer | None:
        """The peer registered under ``name``, or None."""
        rows = self._rows(RemoteAE.name == name)
        if rows:
            return rows[0]
        return next((p for p in self._configured if p.name == name), None)

    def by_ae_title(self, ae_title: str) -> Peer | None:
        """The peer with this AE title (a C-MOVE destination, a calling AE), or None.

        AE titles compare without leading/trailing spaces (PS3.5 6.2: they are not
        significant). With several entries for one title the database one named first wins.
        """
        title = ae_title.strip()
        rows = self._rows(RemoteAE.ae_title == title)
        if rows:
            return rows[0]
        return next((p for p in self._configured if p.ae_title == title), None)

    def configured(self, ae_title: str) -> Peer | None:
        """The settings entry with this AE title (usable while the database is down), or None."""
        title = ae_title.strip()
        return next((p for p in self._configured if p.ae_title == title), None)

    def add(
        self, name: str, ae_title: str, host: str, port: int | str, *,
        may_store: bool = True, may_query: bool = True, may_retrieve: bool = True,
    ) -> Peer:
        """Register a peer; :class:`RegistryError` if the name is taken or a value is bad."""
        name = name.strip()
        if not name or len(name) > 64:
            raise RegistryError("the name must be 1-64 characters")
        if not host.strip():
            raise RegistryError("the host is empty")
        row = RemoteAE(
            name=name, ae_title=check_ae_title(ae_title), host=host.strip(), port=check_port(port),
            may_store=may_store, may_query=may_query, may_retrieve=may_retrieve,
            created_at=datetime.now(timezone.utc),
        )
        try:
            with self._index.write_session() as s:
                s.add(row)
                s.flush()
                peer = _peer(row)
        except IntegrityError as exc:
            raise RegistryError(f"a remote AE named {name!r} already exists") from exc
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc
        log.info("remote AE %s added: %s@%s:%d", name, peer.ae_title, peer.host, peer.port)
        return peer

    def remove(self, name: str) -> bool:
        """Forget a database entry; False if there was none (settings entries stay)."""
        try:
            with self._index.write_session() as s:
                gone = s.execute(delete(RemoteAE).where(RemoteAE.name == name)).rowcount
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc
        if gone:
            log.info("remote AE %s removed", name)
        return bool(gone)

    def may_retrieve(self, calling_ae: str) -> bool:
        """True unless the calling AE is registered with ``may_retrieve`` off."""
        peer = self.by_ae_title(calling_ae)
        return peer is None or peer.may_retrieve
