"""User accounts, lock-out, API tokens, shared secrets and the audit log on the real index."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pacs.store.index import Index
from pacs.store.users import AuthFailed, UserError, Users, token_hash


@pytest.fixture
def users(tmp_path: Path) -> Iterator[Users]:
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}", fsync=False)
    index.migrate()
    yield Users(index, max_failures=3, lockout_minutes=10)
    index.dispose()


def test_add_and_authenticate_is_case_insensitive_on_the_name(users: Users) -> None:
    info = users.add("Binh", "mật khẩu dài", "radiologist", "BS. Trần Thị Bình")
    assert info.username == "binh" and info.role == "radiologist"
    assert users.authenticate("BINH", "mật khẩu dài").id == info.id
    with pytest.raises(AuthFailed):
        users.authenticate("binh", "mật khẩu sai")


def test_password_is_stored_as_argon2id_never_in_clear(users: Users) -> None:
    users.add("an", "correct horse", "referrer")
    with users.index.session() as s:
        stored = s.execute(
            __import__("sqlalchemy").text("SELECT password_hash FROM app_user WHERE username='an'")
        ).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


@pytest.mark.parametrize(
    ("name", "password", "role"),
    [("x", "short", "admin"), ("", "long enough", "admin"), ("a b", "long enough", "admin"),
     ("ok", "long enough", "janitor")],
)
def test_bad_accounts_are_refused(users: Users, name: str, password: str, role: str) -> None:
    with pytest.raises(UserError):
        users.add(name, password, role)


def test_duplicate_user_is_refused(users: Users) -> None:
    users.add("an", "long enough", "admin")
    with pytest.raises(UserError, match="already exists"):
        users.add("AN", "long enough", "admin")


def test_lockout_after_repeated_failures_even_with_the_right_password(users: Users) -> None:
    users.add("an", "right password", "radiologist")
    for _ in range(3):
        with pytest.raises(AuthFailed):
            users.authenticate("an", "wrong password")
    with pytest.raises(AuthFailed, match="locked"):
        users.authenticate("an", "right password")
    # An administrator's password reset unlocks it.
    users.set_password("an", "new password!")
    assert users.authenticate("an", "new password!").username == "an"


def test_a_success_resets_the_failure_count(users: Users) -> None:
    users.add("an", "right password", "radiologist")
    for _ in range(2):
        with pytest.raises(AuthFailed):
            users.authenticate("an", "wrong")
    users.authenticate("an", "right password")
    for _ in range(2):
        with pytest.raises(AuthFailed):
            users.authenticate("an", "wrong")
    assert users.authenticate("an", "right password").username == "an"


def test_disabled_user_cannot_sign_in_nor_use_tokens(users: Users) -> None:
    users.add("an", "right password", "radiologist")
    token = users.create_token("an", "script")
    assert users.by_token(token) is not None
    users.set_disabled("an", True)
    with pytest.raises(AuthFailed, match="disabled"):
        users.authenticate("an", "right password")
    assert users.by_token(token) is None
    users.set_disabled("an", False)
    assert users.by_token(token) is not None


def test_tokens_are_stored_hashed_and_can_be_revoked(users: Users) -> None:
    users.add("an", "right password", "radiologist")
    token = users.create_token("an")
    assert token.startswith("pacs_") and len(token) > 40
    with users.index.session() as s:
        stored = s.execute(__import__("sqlalchemy").text("SELECT token_hash FROM api_token")).scalars().all()
    assert stored == [token_hash(token)]
    assert users.by_token(token + "x") is None
    assert users.by_token("not-a-token") is None
    assert users.revoke_tokens("an") == 1
    assert users.by_token(token) is None


def test_password_change_moves_the_password_version(users: Users) -> None:
    info = users.add("an", "right password", "radiologist")
    users.set_password("an", "another password")
    after = users.get(info.id)
    assert after is not None and after.password_version > info.password_version


def test_secret_is_created_once_and_shared(users: Users, tmp_path: Path) -> None:
    first = users.secret("session-key")
    assert len(first) == 64
    other = Users(Index(f"sqlite:///{tmp_path / 'index.sqlite'}", fsync=False))
    try:
        assert other.secret("session-key") == first
    finally:
        other.index.dispose()


def test_audit_events_are_appended_in_order(users: Users) -> None:
    before = datetime.now(timezone.utc)
    users.audit("signin", username="an", address="10.0.0.7", user_agent="Firefox")
    users.audit("open-study", username="an", study="1.2.3", address="10.0.0.7")
    events = users.audit_events()
    assert [e.action for e in events] == ["open-study", "signin"]
    assert events[0].study_instance_uid == "1.2.3"
    at = events[1].at if events[1].at.tzinfo else events[1].at.replace(tzinfo=timezone.utc)
    assert at >= before.replace(microsecond=0)
