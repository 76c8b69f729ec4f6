"""The metadata index: Patient / Study / Series / Instance (PS3.4 C.6 information model).

Text is kept as decoded UTF-8; person names also as an accent-folded search key
(:func:`pacs.dicom.fold_text`). DA/TM values stay as DICOM strings (``YYYYMMDD``,
``HHMMSS.FFFFFF``) because they compare correctly as text, which is what range
matching (PS3.4 C.2.2.2.5) needs. Schema changes go through Alembic
(``pacs/store/migrations``); never edit a released migration.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, MetaData, String
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
