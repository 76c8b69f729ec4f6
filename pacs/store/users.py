"""Users, API tokens, shared secrets and the audit log, kept in the index database.

Everything here is durable state every node shares (DEVELOPERS.md: stateless nodes), so
a session signed on one node is valid on the next, and a disabled user is disabled
everywhere. Passwords are hashed with argon2id (argon2-cffi, RFC 9106 parameters);
API tokens carry 256 random bits and are stored as their SHA-256 only, which is safe
for high-entropy secrets and fast enough to check on every request.
"""

from __future__ import annotations

import builtins  # Users.list shadows list in the class body
import functools
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError

from pacs.errors import PacsError
from pacs.store.index import Index
from pacs.store.models import ApiToken, AppSecret, AuditEvent, User

log = logging.getLogger(__name__)

ROLES = ("admin", "radiologist", "referrer")
MIN_PASSWORD = 8
TOKEN_PREFIX = "pacs_"
_hasher = PasswordHasher()


class UserError(PacsError):
    """A user operation that cannot be done as asked (unknown user, bad role, weak password)."""


class AuthFailed(PacsError):
    """Wrong credentials, a disabled account or one locked after repeated failures.

    The message is for the log; users see one generic message whatever the reason, so
    the sign-in page does not tell which usernames exist.
    """


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    display_name: str
    role: str
    disabled: bool
    #: Seconds since the epoch of the last password change (a session older than it is void).
    password_version: int
    locked_until: datetime | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes for timezone=True columns; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _info(u: User) -> UserInfo:
    return UserInfo(
        id=u.id, username=u.username, display_name=u.display_name or u.username, role=u.role,
        disabled=u.disabled, password_version=int(_aware(u.password_changed_at).timestamp()),  # type: ignore[union-attr]
        locked_until=_aware(u.locked_until),
    )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password must have at least {MIN_PASSWORD} characters")
    return password


class Users:
    """User accounts and tokens in the index database."""

    def __init__(self, index: Index, *, max_failures: int = 5, lockout_minutes: float = 15.0) -> None:
        self.index = index
        self.max_failures = max_failures
        self.lockout = timedelta(minutes=lockout_minutes)

    # -- accounts ---------------------------------------------------------------------

    def add(self, username: str, password: str, role: str, display_name: str = "") -> UserInfo:
        name = username.strip().lower()
        if not name or len(name) > 64 or any(c.isspace() or c == ":" for c in name):
            raise UserError("username must be 1-64 characters without spaces or ':'")
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}")
        now = _now()
        row = User(
            username=name, display_name=display_name.strip()[:128], role=role,
            password_hash=_hasher.hash(check_password(password)), disabled=False,
            failed_logins=0, created_at=now, password_changed_at=now,
        )
        try:
            with self.index.write_session() as s:
                s.add(row)
                s.flush()
                return _info(row)
        except IntegrityError:
            raise UserError(f"user {name!r} already exists") from None

    def _get_row(self, s: object, username: str) -> User:
        row = s.execute(select(User).where(User.username == username.strip().lower())).scalar_one_or_none()  # type: ignore[attr-defined]
        if row is None:
            raise UserError(f"no user {username!r}")
        return row  # type: ignore[no-any-return]

    def get(self, user_id: int) -> UserInfo | None:
        with self.index.session() as s:
            row = s.get(User, user_id)
            return None if row is None else _info(row)

    def by_name(self, username: str) -> UserInfo | None:
        with self.index.session() as s:
            row = s.execute(select(User).where(User.username == username.strip().lower())).scalar_one_or_none()
            return None if row is None else _info(row)

    def list(self) -> list[UserInfo]:
        with self.index.session() as s:
            return [_info(u) for u in s.execute(select(User).order_by(User.username)).scalars()]

    def count(self) -> int:
        with self.index.session() as s:
            return int(s.scalar(select(func.count()).select_from(User)) or 0)

    def set_password(self, username: str, password: str) -> None:
        """New password; also unlocks the account and ends the user's other sessions."""
        digest = _hasher.hash(check_password(password))
        with self.index.write_session() as s:
            row = self._get_row(s, username)
            now = _now()
            # A second resolution: sessions compare whole seconds, so make the change visible.
            old = _aware(row.password_changed_at)
            if old is not None and int(old.timestamp()) >= int(now.timestamp()):
                now = old + timedelta(seconds=1)
            row.password_hash, row.password_changed_at = digest, now
            row.failed_logins, row.locked_until = 0, None

    def set_disabled(self, username: str, disabled: bool) -> None:
        with self.index.write_session() as s:
            self._get_row(s, username).disabled = disabled

    def verify_password(self, username: str, password: str) -> bool:
        """True if ``password`` is the user's current one (no lock-out bookkeeping)."""
        with self.index.session() as s:
            row = s.execute(select(User).where(User.username == username.strip().lower())).scalar_one_or_none()
            if row is None:
                return False
            try:
                return bool(_hasher.verify(row.password_hash, password))
            except (VerificationError, InvalidHashError):
                return False

    def authenticate(self, username: str, password: str) -> UserInfo:
        """Check a sign-in; count failures and lock the account after ``max_failures`` in a row."""
        now = _now()
        with self.index.write_session() as s:
            row = s.execute(select(User).where(User.username == username.strip().lower())).scalar_one_or_none()
            if row is None:
                # Spend the same time as a real check so timing does not reveal unknown names.
                try:
                    _hasher.verify(_dummy_hash(), password)
                except VerificationError:
                    pass
                raise AuthFailed("unknown user")
            locked = _aware(row.locked_until)
            if locked is not None and locked > now:
                raise AuthFailed(f"user {row.username} is locked until {locked:%H:%M:%S} UTC")
            try:
                _hasher.verify(row.password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                row.failed_logins += 1
                if row.failed_logins >= self.max_failures:
                    row.locked_until, row.failed_logins = now + self.lockout, 0
                    log.warning("user %s locked for %s after %d failed sign-ins",
                                row.username, self.lockout, self.max_failures)
                s.commit()
                raise AuthFailed(f"wrong password for {row.username}") from None
            if row.disabled:
                raise AuthFailed(f"user {row.username} is disabled")
            row.failed_logins, row.locked_until = 0, None
            if _hasher.check_needs_rehash(row.password_hash):
                row.password_hash = _hasher.hash(password)
            return _info(row)

    # -- API tokens -------------------------------------------------------------------

    def create_token(self, username: str, label: str = "") -> str:
        """A new bearer token for ``username``; shown once, only its hash is kept."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.index.write_session() as s:
            row = self._get_row(s, username)
            s.add(ApiToken(user_pk=row.id, token_hash=token_hash(token), label=label[:64],
                           created_at=_now(), revoked=False))
        return token

    def revoke_tokens(self, username: str) -> int:
        with self.index.write_session() as s:
            row = self._get_row(s, username)
            res = s.execute(update(ApiToken).where(ApiToken.user_pk == row.id, ApiToken.revoked.is_(False))
                            .values(revoked=True))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def by_token(self, token: str) -> UserInfo | None:
        """The enabled user a token belongs to, or None (unknown, revoked, user disabled)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self.index.session() as s:
            row = s.execute(
                select(User, ApiToken.id, ApiToken.last_used_at)
                .join(ApiToken, ApiToken.user_pk == User.id)
                .where(ApiToken.token_hash == token_hash(token), ApiToken.revoked.is_(False))
            ).first()
        if row is None or row[0].disabled:
            return None
        user, token_id, last = row
        now = _now()
        last = _aware(last)
        if last is None or now - last > timedelta(minutes=1):  # at most one write a minute
            with self.index.write_session() as s:
                s.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
        return _info(user)

    # -- shared secrets -----------------------------------------------------------------

    def secret(self, name: str) -> str:
        """A random secret shared by every node, created by whichever node asks first."""
        with self.index.session() as s:
            value = s.get(AppSecret, name)
            if value is not None:
                return value.value
        try:
            with self.index.write_session() as s:
                s.add(AppSecret(name=name, value=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another node created it first: use theirs
        with self.index.session() as s:
            return s.get(AppSecret, name).value  # type: ignore[union-attr]

    # -- audit log ----------------------------------------------------------------------

    def audit(self, action: str, *, username: str = "", study: str = "", address: str = "",
              user_agent: str = "", detail: str = "") -> None:
        """Append one audit event (never patient names: UIDs, users, addresses only).

        User names are kept lower case, as accounts are: a failed sign-in typed ``Binh``
        then shows under ``binh`` when the log is filtered by user.
        """
        with self.index.write_session() as s:
            s.add(AuditEvent(at=_now(), username=username.strip().lower()[:64], action=action[:32],
                             study_instance_uid=study[:64], address=address[:64],
                             user_agent=user_agent[:255], detail=detail[:255]))

    @staticmethod
    def _audit_filter(query: Select[Any], username: str, action: str, study: str) -> Select[Any]:
        if username:  # stored lower case (see audit()), so the username index serves this
            query = query.where(AuditEvent.username == username.strip().lower())
        if action:
            query = query.where(AuditEvent.action == action.strip())
        if study:
            query = query.where(AuditEvent.study_instance_uid == study.strip())
        return query

    def audit_events(self, limit: int = 100, *, offset: int = 0, username: str = "",
                     action: str = "", study: str = "") -> builtins.list[AuditEvent]:
        """Audit events newest first, optionally only one user's, action's or study's."""
        query = self._audit_filter(select(AuditEvent), username, action, study)
        query = query.order_by(AuditEvent.id.desc()).offset(max(0, offset)).limit(max(0, limit))
        with self.index.session() as s:
            return list(s.execute(query).scalars())

    def audit_count(self, *, username: str = "", action: str = "", study: str = "") -> int:
        """How many events :meth:`audit_events` would page through with these filters."""
        query = self._audit_filter(select(func.count()).select_from(AuditEvent), username, action, study)
        with self.index.session() as s:
            return int(s.scalar(query) or 0)


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_hex(8))
