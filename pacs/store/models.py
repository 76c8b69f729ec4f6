"""The metadata index: Patient / Study / Series / Instance (PS3.4 C.6 information model).

Text is kept as decoded UTF-8; person names also as an accent-folded search key
(:func:`pacs.dicom.fold_text`). DA/TM values stay as DICOM strings (``YYYYMMDD``,
``HHMMSS.FFFFFF``) because they compare correctly as text, which is what range
matching (PS3.4 C.2.2.2.5) needs. Schema changes go through Alembic
(``pacs/store/migrations``); never edit a released migration.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Patient(Base):
    __tablename__ = "patient"
    # Name prefix search (C-FIND / QIDO wildcards): on PostgreSQL ``LIKE 'X%'`` can use a B-tree
    # index only with the pattern operator class when the database collation is not "C".
    __table_args__ = (
        Index("ix_patient_name_folded", "patient_name_folded",
              postgresql_ops={"patient_name_folded": "varchar_pattern_ops"}),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Identity of the patient in this archive: PatientID, or name+birth date when it is empty.
    patient_key: Mapped[str] = mapped_column(String(420), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True, default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_name_folded: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "study"
    __table_args__ = (
        Index("ix_study_referring_physician_folded", "referring_physician_folded",
              postgresql_ops={"referring_physician_folded": "varchar_pattern_ops"}),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), index=True, default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), index=True, default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    referring_physician_folded: Mapped[str] = mapped_column(String(324), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # Kept at ingest by ``Index._add`` in each new instance's own transaction, like
    # Series.num_instances. Why: NumberOfStudyRelatedSeries / -Instances and ModalitiesInStudy
    # (PS3.4 C.6.2.1.2, C.6.1.1.3) as correlated subqueries over the series table took the
    # one-day C-FIND's SELECT from 2.3 to 3.9 ms on PostgreSQL (98 studies); as columns they
    # are read with the row.
    #: Series of this study holding at least one instance.
    num_series: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Instances of this study (the sum of its series' counters).
    num_instances: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Distinct non-empty Modality values of those series, comma-joined in arrival order
    #: (CS values never hold a comma, PS3.5 6.2); answers sort them.
    modalities: Mapped[str] = mapped_column(Text, default="", server_default="")

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    # ModalitiesInStudy per study read from the index alone (PS3.4 C.6.2.1.2).
    __table_args__ = (Index("ix_series_study_modality", "study_pk", "modality"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), index=True, default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: Instances in this series, counted up by ``Index._add`` in each new instance's own
    #: transaction. Why: NumberOf*RelatedInstances (PS3.4 C.6.1.1.2-4) counted from the instance
    #: table at query time cost 4 ms (SQLite) and 10-16 ms (PostgreSQL) for one day's 98
    #: studies of 300 instances; the sums of these counters cost a few series rows per study.
    num_instances: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"
    __table_args__ = (Index("ix_instance_series_number", "series_pk", "instance_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(255), unique=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    #: How it arrived: dicom, import, stow, reindex.
    origin: Mapped[str] = mapped_column(String(16), default="")

    series: Mapped[Series] = relationship(back_populates="instances")


class RemoteAE(Base):
    """A known DICOM peer (``pacs ae add``): a C-MOVE destination and, optionally, a restricted caller.

    ``name`` is the operator's handle; ``ae_title`` is what goes on the wire (PS3.5 AE VR,
    up to 16 characters). The ``may_*`` flags restrict what this AE may ask of us when it
    is the calling AE; callers that are not registered are not restricted.
    """

    __tablename__ = "remote_ae"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    may_store: Mapped[bool] = mapped_column(Boolean, default=True)
    may_query: Mapped[bool] = mapped_column(Boolean, default=True)
    may_retrieve: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class User(Base):
    """A person who signs in to the web app (PS: never a DICOM peer; those are RemoteAE).

    ``password_hash`` is an argon2id string (``$argon2id$...``); ``username`` is stored
    lower-case so sign-in is case-insensitive. ``password_changed_at`` is copied into the
    session cookie: changing the password signs out every other session of the user.
    """

    __tablename__ = "app_user"  # "user" is a reserved word in PostgreSQL

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    password_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A bearer token for scripts (``pacs token create``); only its SHA-256 is stored."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AppSecret(Base):
    """Secrets every node must share (the session-signing key), created once at first start."""

    __tablename__ = "app_secret"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class AuditEvent(Base):
    """Who did what to which study, when, from where (sign-ins, study opens, failures)."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    username: Mapped[str] = mapped_column(String(64), index=True, default="")
    action: Mapped[str] = mapped_column(String(32))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True, default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[str] = mapped_column(String(255), default="")


# Imported here so that this block is a pure append to the module (several people edit it).
from sqlalchemy import LargeBinary, Text  # noqa: E402


class InstanceMetadata(Base):
    """Per-instance DICOM JSON without bulk data, and where its frames are: a cache built at ingest.

    Why: WADO-RS series metadata of a 300-slice CT must not read 300 blobs (PS3.18 10.4.1.1.2
    answers with every attribute of every instance). It is derived data: ``blob_key`` names the
    bytes it was built from, so a row whose key differs from the instance's (the instance was
    replaced under the ``overwrite`` policy) is a miss, never stale data; a missing row is
    rebuilt from the blob on first use (``pacs/store/metadata.py``).
    """

    __tablename__ = "instance_metadata"

    instance_pk: Mapped[int] = mapped_column(
        ForeignKey("instance.id", ondelete="CASCADE"), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(255))
    #: zlib-compressed UTF-8 DICOM JSON object; BulkDataURIs relative to the instance URL.
    dicom_json: Mapped[bytes] = mapped_column(LargeBinary)
    #: JSON of :class:`pacs.pixeldata.FrameMap` (byte ranges of the frames), or None.
    frames: Mapped[str | None] = mapped_column(Text, nullable=True)


class ShareLink(Base):
    """A shared study link (``/s/<token>``) for remote consultation; only the token's hash is kept."""

    __tablename__ = "share_link"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    #: Backslash-separated Series Instance UIDs the link is limited to; empty: the whole study.
    series_uids: Mapped[str] = mapped_column(Text, default="")
    label: Mapped[str] = mapped_column(String(128), default="")
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: argon2id hash of the PIN, or empty when the link has none.
    pin_hash: Mapped[str] = mapped_column(String(255), default="")
    pin_failures: Mapped[int] = mapped_column(Integer, default=0)
    pin_locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deidentify: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_download: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_notes: Mapped[bool] = mapped_column(Boolean, default=True)
    views: Mapped[int] = mapped_column(Integer, default=0)
    last_access_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Random per link: de-identified UIDs are derived from it, the same on every request.
    uid_salt: Mapped[str] = mapped_column(String(64))


class ShareNote(Base):
    """A consultation note left by someone who opened a link."""

    __tablename__ = "share_note"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    share_pk: Mapped[int] = mapped_column(ForeignKey("share_link.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    author: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
