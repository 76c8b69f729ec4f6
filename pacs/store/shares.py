"""Shared study links for remote consultation (hội chẩn từ xa): create, resolve, PIN, revoke, notes.

A link is ``/s/<token>``: 192 random bits, stored only as their SHA-256, carrying no patient
data. It grants one study (optionally a subset of its series) and nothing else. Expired or
revoked links are *gone* (HTTP 410); unknown ones are *not found* (404); neither says whether
the study exists. A PIN, when set, is hashed with argon2id like a password, and wrong
guesses lock the link for a while after a few in a row.

Everything is in the index database, so any node serves any link and a revocation is seen by
every node at its next request. The clock is injectable so that expiry can be tested.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update

from pacs.errors import NotFound, PacsError
from pacs.store.index import Index
from pacs.store.users import token_hash
from pacs.store.models import ShareLink, ShareNote, Study

TOKEN_BYTES = 24  # 192 bits (the issue asks for at least 128)
PIN_MAX_FAILURES = 5
PIN_DIGITS = (4, 8)
PIN_LOCKOUT = timedelta(minutes=15)
_hasher = PasswordHasher()


class ShareGone(PacsError):
    """The link existed but has expired or was revoked (HTTP 410)."""


class ShareError(PacsError):
    """A link cannot be created or changed as asked (bad expiry, unknown study, …)."""


class PinRequired(PacsError):
    """The link has a PIN and it was not given (or was wrong); ``locked`` when locked out."""

    def __init__(self, message: str, *, locked: bool = False) -> None:
        super().__init__(message)
        self.locked = locked


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)  # SQLite returns naive UTC
    return value


@dataclass(frozen=True)
class Share:
    """A link as the rest of the app sees it (never the token: only its id)."""

    id: int
    study_instance_uid: str
    series_uids: tuple[str, ...]  # empty: the whole study
    label: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    has_pin: bool
    deidentify: bool
    allow_download: bool
    allow_notes: bool
    views: int
    last_access_at: datetime | None
    #: Secret per link that de-identified UIDs are derived from (consistent within the link).
    uid_salt: str

    def allows(self, study: str, series: str | None = None) -> bool:
        """True if this link grants ``study`` (and ``series``, when given)."""
        if study != self.study_instance_uid:
            return False
        return series is None or not self.series_uids or series in self.series_uids

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"


@dataclass(frozen=True)
class Note:
    at: datetime
    author: str
    text: str


def _share(row: ShareLink) -> Share:
    return Share(
        id=row.id, study_instance_uid=row.study_instance_uid,
        series_uids=tuple(u for u in row.series_uids.split("\\") if u), label=row.label,
        created_by=row.created_by, created_at=_utc(row.created_at),  # type: ignore[arg-type]
        expires_at=_utc(row.expires_at), revoked_at=_utc(row.revoked_at),  # type: ignore[arg-type]
        has_pin=bool(row.pin_hash), deidentify=row.deidentify, allow_download=row.allow_download,
        allow_notes=row.allow_notes, views=row.views, last_access_at=_utc(row.last_access_at),
        uid_salt=row.uid_salt,
    )


class Shares:
    """Share links in the index database."""

    def __init__(self, index: Index, *, default_days: float = 7, max_days: float = 30,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.index = index
        self.default_days = default_days
        self.max_days = max_days
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    def create(
        self, study_uid: str, *, created_by: str, days: float | None = None, pin: str = "",
        deidentify: bool = False, allow_download: bool = False, allow_notes: bool = True,
        series_uids: list[str] | tuple[str, ...] = (), label: str = "",
    ) -> tuple[str, Share]:
        """A new link; returns the token (shown once) and the link."""
        days = self.default_days if days is None else days
        if not 0 < days <= self.max_days:
            raise ShareError(f"expiry must be more than 0 and at most {self.max_days:g} days")
        if pin and (not (pin.isascii() and pin.isdigit()) or not PIN_DIGITS[0] <= len(pin) <= PIN_DIGITS[1]):
            raise ShareError(f"a PIN is {PIN_DIGITS[0]} to {PIN_DIGITS[1]} digits")
        now = self.clock()
        with self.index.write_session() as s:
            study = s.execute(select(Study.id).where(Study.study_instance_uid == study_uid)).first()
            if study is None:
                raise NotFound("no such study")
            if series_uids:
                from pacs.store.models import Series

                known = set(s.execute(select(Series.series_instance_uid).where(
                    Series.study_pk == study[0])).scalars())
                unknown = [u for u in series_uids if u not in known]
                if unknown:
                    raise ShareError(f"series not in this study: {', '.join(unknown)}")
            token = secrets.token_urlsafe(TOKEN_BYTES)
            row = ShareLink(
                token_hash=token_hash(token), study_instance_uid=study_uid,
                series_uids="\\".join(series_uids), label=label.strip()[:128],
                created_by=created_by[:64], created_at=now, expires_at=now + timedelta(days=days),
                pin_hash=_hasher.hash(pin) if pin else "", pin_failures=0, deidentify=deidentify,
                allow_download=allow_download, allow_notes=allow_notes, views=0,
                uid_salt=secrets.token_hex(16),
            )
            s.add(row)
            s.flush()
            return token, _share(row)

    def resolve(self, token: str) -> Share:
        """The link of ``token``: NotFound if unknown, ShareGone if expired or revoked."""
        if not token or len(token) > 128:
            raise NotFound("no such link")
        with self.index.session() as s:
            row = s.execute(select(ShareLink).where(ShareLink.token_hash == token_hash(token))).scalar_one_or_none()
            if row is None:
                raise NotFound("no such link")
            share = _share(row)
        state = share.state(self.clock())
        if state != "active":
            raise ShareGone(f"this link has {'been revoked' if state == 'revoked' else 'expired'}")
        return share

    def check_pin(self, share: Share, pin: str) -> None:
        """Raise PinRequired unless ``pin`` is right; count failures, lock after a few."""
        if not share.has_pin:
            return
        now = self.clock()
        with self.index.write_session() as s:
            row = s.get(ShareLink, share.id)
            assert row is not None
            locked = _utc(row.pin_locked_until)
            if locked is not None and locked > now:
                raise PinRequired("too many wrong PINs: try again later", locked=True)
            try:
                _hasher.verify(row.pin_hash, pin)
            except (VerificationError, InvalidHashError):
                row.pin_failures += 1
                if row.pin_failures % PIN_MAX_FAILURES == 0:
                    # Every lock-out doubles the next (15 min, 30, 1 h, …): a 4-digit PIN would
                    # otherwise fall to 480 guesses a day well within a link's 30-day life.
                    lockouts = row.pin_failures // PIN_MAX_FAILURES
                    row.pin_locked_until = now + PIN_LOCKOUT * 2 ** min(lockouts - 1, 16)
                    s.commit()
                    raise PinRequired("too many wrong PINs: try again later", locked=True) from None
                s.commit()
                raise PinRequired("wrong PIN") from None
            row.pin_failures, row.pin_locked_until = 0, None

    def record_access(self, share: Share) -> None:
        """Count a view (the audit log entry is written by the caller, with address and agent)."""
        with self.index.write_session() as s:
            s.execute(update(ShareLink).where(ShareLink.id == share.id)
                      .values(views=ShareLink.views + 1, last_access_at=self.clock()))

    def revoke(self, share_id: int) -> bool:
        with self.index.write_session() as s:
            res = s.execute(update(ShareLink).where(ShareLink.id == share_id, ShareLink.revoked_at.is_(None))
                            .values(revoked_at=self.clock()))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def get(self, share_id: int) -> Share | None:
        with self.index.session() as s:
            row = s.get(ShareLink, share_id)
            return None if row is None else _share(row)

    def for_study(self, study_uid: str) -> list[Share]:
        with self.index.session() as s:
            rows = s.execute(select(ShareLink).where(ShareLink.study_instance_uid == study_uid)
                             .order_by(ShareLink.id.desc())).scalars()
            return [_share(r) for r in rows]

    def active(self) -> list[Share]:
        now = self.clock()
        with self.index.session() as s:
            rows = s.execute(select(ShareLink).where(ShareLink.revoked_at.is_(None), ShareLink.expires_at > now)
                             .order_by(ShareLink.expires_at)).scalars()
            return [_share(r) for r in rows]

    def add_note(self, share: Share, author: str, text: str) -> Note:
        if not share.allow_notes:
            raise ShareError("notes are not enabled for this link")
        author, text = author.strip()[:128], text.strip()
        if not author or not text:
            raise ShareError("a note needs a name and a text")
        if len(text) > 4000:
            raise ShareError("a note is at most 4000 characters")
        now = self.clock()
        with self.index.write_session() as s:
            s.add(ShareNote(share_pk=share.id, at=now, author=author, text=text))
        return Note(now, author, text)

    def notes(self, *, share_id: int | None = None, study_uid: str | None = None) -> list[tuple[int, Note]]:
        """Notes of one link, or of every link of a study, oldest first, with their link id."""
        q = select(ShareNote.share_pk, ShareNote.at, ShareNote.author, ShareNote.text).order_by(ShareNote.id)
        if share_id is not None:
            q = q.where(ShareNote.share_pk == share_id)
        if study_uid is not None:
            q = q.join(ShareLink, ShareLink.id == ShareNote.share_pk).where(
                ShareLink.study_instance_uid == study_uid)
        with self.index.session() as s:
            return [(pk, Note(_utc(at), author, text)) for pk, at, author, text in s.execute(q)]  # type: ignore[arg-type]

    def note_count(self, share_id: int) -> int:
        """How many notes were left through one link (a count, not the notes)."""
        with self.index.session() as s:
            return int(s.scalar(select(func.count()).where(ShareNote.share_pk == share_id)) or 0)
