"""Share links on the real index: tokens, expiry with a controllable clock, PIN lock-out, notes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from pacs.errors import NotFound
from pacs.ingest import IngestService, Origin
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.shares import PinRequired, ShareError, ShareGone, Shares, token_hash

SAMPLES = Path(__file__).resolve().parents[2] / "sample_dicom"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shares(tmp_path: Path, clock: Clock) -> Iterator[Shares]:
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}", fsync=False)
    index.migrate()
    ingest = IngestService(FilesystemBlobStore(tmp_path / "blobs", fsync=False), index)
    for path in (SAMPLES / "patient_77654033").glob("*.dcm"):
        ingest.store(path.read_bytes(), Origin("import"))
    ingest.close()
    yield Shares(index, default_days=7, max_days=30, clock=clock)
    index.dispose()


def a_study(shares: Shares) -> tuple[str, list[str]]:
    with shares.index.session() as s:
        rows = s.execute(text(
            "SELECT study.study_instance_uid, series.series_instance_uid FROM series "
            "JOIN study ON study.id = series.study_pk ORDER BY study.id, series.id")).all()
    by_study: dict[str, list[str]] = {}
    for st, se in rows:
        by_study.setdefault(st, []).append(se)
    study = max(by_study, key=lambda st: len(by_study[st]))  # the C-spine study: 3 CR series
    return study, by_study[study]


def test_token_is_random_and_stored_only_as_a_hash(shares: Shares) -> None:
    study, _ = a_study(shares)
    token, share = shares.create(study, created_by="binh")
    other, _ = shares.create(study, created_by="binh")
    assert token != other and len(token) >= 32  # 192 bits, URL-safe base64
    with shares.index.session() as s:
        stored = s.execute(text("SELECT token_hash FROM share_link")).scalars().all()
    assert token_hash(token) in stored and token not in stored
    assert shares.resolve(token).id == share.id


def test_unknown_tampered_and_truncated_tokens_are_not_found(shares: Shares) -> None:
    study, _ = a_study(shares)
    token, _ = shares.create(study, created_by="binh")
    for bad in ("", token[:-1], token + "A", token[:10], "x" * 500):
        with pytest.raises(NotFound):
            shares.resolve(bad)


def test_expiry_follows_the_clock(shares: Shares, clock: Clock) -> None:
    study, _ = a_study(shares)
    token, share = shares.create(study, created_by="binh", days=2)
    assert share.expires_at == clock.now + timedelta(days=2)
    clock.now += timedelta(days=2) - timedelta(seconds=1)
    shares.resolve(token)
    clock.now += timedelta(seconds=1)
    with pytest.raises(ShareGone, match="expired"):
        shares.resolve(token)
    assert shares.active() == []


def test_expiry_limits(shares: Shares) -> None:
    study, _ = a_study(shares)
    for days in (0, -1, 31):
        with pytest.raises(ShareError):
            shares.create(study, created_by="binh", days=days)
    assert shares.create(study, created_by="binh")[1].expires_at - shares.clock() == timedelta(days=7)


def test_revoke_is_immediate(shares: Shares) -> None:
    study, _ = a_study(shares)
    token, share = shares.create(study, created_by="binh")
    assert shares.revoke(share.id) is True
    with pytest.raises(ShareGone, match="revoked"):
        shares.resolve(token)
    assert shares.revoke(share.id) is False


def test_scope_is_the_study_and_the_series_subset(shares: Shares) -> None:
    study, series = a_study(shares)
    assert len(series) >= 2
    _, whole = shares.create(study, created_by="binh")
    assert whole.allows(study) and all(whole.allows(study, se) for se in series)
    assert not whole.allows("1.2.3")
    _, subset = shares.create(study, created_by="binh", series_uids=series[:1])
    assert subset.allows(study, series[0]) and not subset.allows(study, series[1])
    with pytest.raises(ShareError):
        shares.create(study, created_by="binh", series_uids=["9.9.9"])
    with pytest.raises(NotFound):
        shares.create("9.9.9", created_by="binh")


def test_pin_is_checked_and_locks_after_repeated_failures(shares: Shares, clock: Clock) -> None:
    study, _ = a_study(shares)
    token, share = shares.create(study, created_by="binh", pin="2468")
    assert share.has_pin
    shares.check_pin(share, "2468")
    for _ in range(4):
        with pytest.raises(PinRequired) as err:
            shares.check_pin(share, "0000")
        assert not err.value.locked
    with pytest.raises(PinRequired) as err:
        shares.check_pin(share, "0000")
    assert err.value.locked
    with pytest.raises(PinRequired):  # even the right PIN while locked
        shares.check_pin(share, "2468")
    clock.now += timedelta(minutes=16)
    shares.check_pin(share, "2468")
    with pytest.raises(ShareError):
        shares.create(study, created_by="binh", pin="12ab")


def test_views_and_notes(shares: Shares) -> None:
    study, _ = a_study(shares)
    _, share = shares.create(study, created_by="binh", label="BV Bạch Mai")
    shares.record_access(share)
    shares.record_access(share)
    after = shares.get(share.id)
    assert after is not None and after.views == 2 and after.last_access_at is not None
    shares.add_note(share, "BS. Lê Văn Cường", "Không thấy tổn thương khu trú.")
    notes = shares.notes(study_uid=study)
    assert [(pk, n.author, n.text) for pk, n in notes] == [
        (share.id, "BS. Lê Văn Cường", "Không thấy tổn thương khu trú.")]
    with pytest.raises(ShareError):
        shares.add_note(share, "", "text")
    _, silent = shares.create(study, created_by="binh", allow_notes=False)
    with pytest.raises(ShareError):
        shares.add_note(silent, "x", "y")
    assert [s.id for s in shares.for_study(study)] == [silent.id, share.id]


def test_each_pin_lock_out_lasts_twice_as_long(shares: Shares, clock: Clock) -> None:
    """Guessing a 4-digit PIN 5 times every 15 minutes would find it in days: locks double."""
    study, _ = a_study(shares)
    _token, share = shares.create(study, created_by="binh", pin="2468")

    def five_wrong() -> None:
        for _ in range(5):
            with pytest.raises(PinRequired):
                shares.check_pin(share, "0000")

    def locked() -> bool:
        try:
            shares.check_pin(share, "1111")  # wrong: if not locked this counts a failure too
        except PinRequired as err:
            return err.locked
        return False

    five_wrong()
    clock.now += timedelta(minutes=16)
    five_wrong()  # second lock-out: 30 minutes
    clock.now += timedelta(minutes=16)
    assert locked()  # a first lock-out would have ended by now
    clock.now += timedelta(minutes=15)
    shares.check_pin(share, "2468")  # 31 minutes on: open again, and the count starts over
    five_wrong()
    clock.now += timedelta(minutes=16)
    shares.check_pin(share, "2468")  # back to 15 minutes after a right PIN
