"""C-FIND end to end: DCMTK ``findscu`` against the real ``pacs serve`` (PS3.4 C.4.1).

Every test runs on filesystem + SQLite and on S3 + PostgreSQL (``pacs_server``). Answers are
written by ``findscu -X -od DIR`` and read back with pydicom.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.fixtures.dcmtk import DcmtkTools, run_tool
from tests.fixtures.find_data import (
    S1, S2, S3, S4, S5, SE1, SE2, SE3, datasets, instance_uid,
)
from tests.fixtures.server import PacsServer, backend_env, make_server
from tests.scp.test_store_scp import echo_ok, scu_store


class Finder:
    """Runs ``findscu`` and returns its answers as datasets plus the final status line."""

    def __init__(self, server: PacsServer, dcmtk: DcmtkTools, tmp: Path) -> None:
        self.server, self.dcmtk, self.tmp, self.n = server, dcmtk, tmp, 0

    def __call__(self, model: str, level: str, *keys: str, extra: tuple[str, ...] = ()) -> tuple[list[Dataset], str]:
        self.n += 1
        out = self.tmp / f"q{self.n}"
        out.mkdir()
        args = [self.dcmtk.findscu, "-v", model, "-aet", "FINDSCU", "-aec", self.server.ae_title,
                "-X", "-od", str(out), *extra, "-k", f"QueryRetrieveLevel={level}"]
        for k in keys:
            args += ["-k", k]
        proc = run_tool([*args, "127.0.0.1", str(self.server.dicom_port)])
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text
        final = [line for line in text.splitlines() if "Received Final Find Response" in line]
        assert len(final) == 1, text
        answers = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        return answers, final[0]


@pytest.fixture
def loaded(pacs_server: PacsServer) -> PacsServer:
    statuses = scu_store(pacs_server, datasets())
    assert {s.Status for s in statuses} == {0x0000}
    return pacs_server


@pytest.fixture
def find(loaded: PacsServer, dcmtk: DcmtkTools, tmp_path: Path) -> Finder:
    return Finder(loaded, dcmtk, tmp_path)


def by(answers: list[Dataset], key: str) -> dict[str, Dataset]:
    values = [str(a.get(key, "")) for a in answers]
    assert len(values) == len(set(values)), f"duplicate {key} answers: {values}"
    return dict(zip(values, answers))


def test_study_root_study_level(find: Finder) -> None:
    keys = ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyDescription")
    answers, final = find("-S", "STUDY", *keys)
    assert "Success" in final
    studies = by(answers, "StudyInstanceUID")  # one answer per study, not per instance
    assert set(studies) == {S1, S2, S3, S4, S5}
    a = studies[S1]
    assert a.SpecificCharacterSet == "ISO_IR 192"
    assert a.QueryRetrieveLevel == "STUDY"
    assert str(a.PatientName) == "Nguyễn^Văn An"
    assert a.StudyDescription == "CT ngực"
    assert list(a.ModalitiesInStudy) == ["CT", "SR"]
    assert (int(a.NumberOfStudyRelatedSeries), int(a.NumberOfStudyRelatedInstances)) == (2, 4)
    assert str(studies[S3].PatientName) == "Đặng^Minh Châu"
    # Every requested key is present, empty when unknown.
    assert all(k in a for k in keys)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nguyen*", {S1, S2, S4}),
        ("NGUYEN*", {S1, S2, S4}),
        ("nguyen van*", {S1, S2}),
        ("Nguyễn*", {S1, S2, S4}),
        ("Dang*", {S3}),
    ],
)
def test_accent_insensitive_names(find: Finder, name: str, expected: set[str]) -> None:
    answers, final = find("-S", "STUDY", "StudyInstanceUID", f"PatientName={name}",
                          "SpecificCharacterSet=ISO_IR 192")
    assert "Success" in final
    assert set(by(answers, "StudyInstanceUID")) == expected


def test_ranges_lists_and_wildcards(find: Finder) -> None:
    cases = [
        (("StudyDate=20261101-20261130",), {S1, S2}),
        (("StudyDate=-20261031",), {S4, S5}),
        (("StudyDate=20261201-",), {S3}),
        ((f"StudyInstanceUID={S1}\\{S3}",), {S1, S3}),
        (("AccessionNumber=A?",), {S1, S2, S3, S5}),
        (("ModalitiesInStudy=MR",), {S2}),
        (("StudyTime=1000-1200",), {S1}),
    ]
    for keys, expected in cases:
        answers, final = find("-S", "STUDY", "StudyInstanceUID", *keys)
        assert "Success" in final, keys
        assert set(by(answers, "StudyInstanceUID")) == expected, keys


def test_patient_root_every_level(find: Finder) -> None:
    answers, _ = find("-P", "PATIENT", "PatientID", "PatientName=nguyen*",
                      "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                      "NumberOfPatientRelatedInstances")
    patients = by(answers, "PatientID")
    assert set(patients) == {"VN001", "VN003"}
    p = patients["VN001"]
    assert (int(p.NumberOfPatientRelatedStudies), int(p.NumberOfPatientRelatedSeries),
            int(p.NumberOfPatientRelatedInstances)) == (2, 3, 6)
    assert p.QueryRetrieveLevel == "PATIENT"

    answers, _ = find("-P", "STUDY", "PatientID=VN001", "StudyInstanceUID", "StudyDate")
    assert set(by(answers, "StudyInstanceUID")) == {S1, S2}

    answers, _ = find("-P", "SERIES", "PatientID=VN001", f"StudyInstanceUID={S1}",
                      "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    series = by(answers, "SeriesInstanceUID")
    assert {u: (s.Modality, int(s.NumberOfSeriesRelatedInstances)) for u, s in series.items()} == {
        SE1: ("CT", 3), SE2: ("SR", 1)}

    answers, _ = find("-P", "IMAGE", "PatientID=VN001", f"StudyInstanceUID={S1}",
                      f"SeriesInstanceUID={SE1}", "SOPInstanceUID", "InstanceNumber")
    assert set(by(answers, "SOPInstanceUID")) == {instance_uid(SE1, i) for i in (1, 2, 3)}


def test_study_root_series_and_image_levels(find: Finder) -> None:
    answers, _ = find("-S", "SERIES", f"StudyInstanceUID={S2}", "SeriesInstanceUID", "Modality",
                      "SeriesNumber")
    assert set(by(answers, "SeriesInstanceUID")) == {SE3}
    assert answers[0].Modality == "MR" and answers[0].StudyInstanceUID == S2
    answers, _ = find("-S", "IMAGE", f"StudyInstanceUID={S2}", f"SeriesInstanceUID={SE3}",
                      "SOPInstanceUID", "InstanceNumber=2", "SOPClassUID", "RetrieveAETitle")
    assert [a.SOPInstanceUID for a in answers] == [instance_uid(SE3, 2)]
    assert answers[0].RetrieveAETitle == "MINIPACS"
    assert answers[0].QueryRetrieveLevel == "IMAGE"


def test_bad_queries_fail_and_server_keeps_answering(find: Finder, loaded: PacsServer,
                                                     dcmtk: DcmtkTools) -> None:
    _, final = find("-S", "FOO", "StudyInstanceUID")
    assert "DataSetDoesNotMatchSOPClass" in final  # 0xA900
    _, final = find("-S", "PATIENT", "PatientID")  # Study Root has no PATIENT level
    assert "DataSetDoesNotMatchSOPClass" in final
    _, final = find("-S", "SERIES", "SeriesInstanceUID")  # hierarchical: StudyInstanceUID missing
    assert "DataSetDoesNotMatchSOPClass" in final
    answers, final = find("-S", "STUDY", "StudyDate=2026-01-01")
    assert "UnableToProcess" in final and answers == []  # 0xC000
    assert echo_ok(loaded, dcmtk)
    answers, final = find("-S", "STUDY", "StudyInstanceUID", "StudyDate=20261105")
    assert "Success" in final and set(by(answers, "StudyInstanceUID")) == {S1}
    assert "malformed range" in loaded.log
    assert "Nguyễn" not in loaded.log  # identifiers (patient names) are not logged


def test_cancel_between_answers(tmp_path: Path) -> None:
    """C-CANCEL (PS3.7 9.3.2.3): checked between answers, then a Cancel status ends it.

    Driven directly: over the network the five answers are all sent before findscu's
    ``--cancel`` can arrive, so an end-to-end test would be a race.
    """
    from types import SimpleNamespace

    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    from pacs.config import Settings
    from pacs.ingest import IngestService, Origin
    from pacs.scp.find import handle_find
    from pacs.store.blobs import FilesystemBlobStore
    from pacs.store.index import Index
    from tests.test_dicom import part10

    index = Index(f"sqlite:///{tmp_path / 'i.sqlite'}", fsync=False)
    index.migrate()
    ingest = IngestService(FilesystemBlobStore(tmp_path / "b", fsync=False), index)
    for ds in datasets():
        ingest.store(part10(ds), Origin("import"))
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    polls = iter([False, False, True])

    class Event:
        assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="T", address="x"))
        request = SimpleNamespace(AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelFind)

        @property
        def is_cancelled(self) -> bool:
            return next(polls)

    event = Event()
    event.identifier = identifier  # type: ignore[attr-defined]
    out = list(handle_find(event, index, Settings()))
    assert [s for s, _ in out] == [0xFF00, 0xFF00, 0xFE00]
    assert out[-1][1] is None
    index.dispose()


def test_index_lost_part_way_ends_with_out_of_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers stream from the index (FindStream): a failure after some pendings ends the
    C-FIND with 0xA700 (PS3.4 C.4.1.1.4), not an exception in pynetdicom's loop."""
    from types import SimpleNamespace

    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    from pacs.config import Settings
    from pacs.errors import StorageUnavailable
    from pacs.ingest import IngestService, Origin
    from pacs.scp import find as find_module
    from pacs.store.blobs import FilesystemBlobStore
    from pacs.store.index import Index
    from tests.test_dicom import part10

    index = Index(f"sqlite:///{tmp_path / 'i.sqlite'}", fsync=False)
    index.migrate()
    ingest = IngestService(FilesystemBlobStore(tmp_path / "b", fsync=False), index)
    for ds in datasets():
        ingest.store(part10(ds), Origin("import"))

    class Failing(find_module.FindStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            for n, row in enumerate(super().__iter__()):
                if n == 2:
                    raise StorageUnavailable("index database unavailable: gone")
                yield row

    monkeypatch.setattr(find_module, "FindStream", Failing)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    event = SimpleNamespace(
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="T", address="x")),
        request=SimpleNamespace(AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelFind),
        is_cancelled=False, identifier=identifier)
    out = list(find_module.handle_find(event, index, Settings()))  # type: ignore[arg-type]
    assert [s for s, _ in out[:2]] == [0xFF00, 0xFF00]
    assert len(out) == 3 and out[2][0].Status == 0xA700 and out[2][1] is None
    index.dispose()


def test_result_limit(request: pytest.FixtureRequest, backend: str, tmp_path: Path,
                      dcmtk: DcmtkTools) -> None:
    env = backend_env(request, backend) | {"PACS_FIND_LIMIT": "2"}
    server = make_server(tmp_path / "data", env).start()
    try:
        scu_store(server, datasets())
        answers, final = Finder(server, dcmtk, tmp_path)("-S", "STUDY", "StudyInstanceUID")
        assert "Success" in final
        assert len(answers) == 2
        assert "answered the first 2 (find_limit)" in server.log
    finally:
        server.stop()


def test_answers_carry_every_requested_key(find: Finder) -> None:
    """Keys the index has, fixed ones and unknown ones, as DCMTK reads them off the wire
    (the identifiers are written by pacs.scp.fastfind, not by pydicom)."""
    keys = (f"StudyInstanceUID={S1}\\{S3}", "PatientName", "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances", "RetrieveAETitle", "InstanceAvailability", "PatientAge",
            "ReferencedStudySequence", "StudyDescription")
    answers, final = find("-S", "STUDY", *keys, extra=("-k", "SpecificCharacterSet=ISO_IR 192"))
    assert "Success" in final
    studies = by(answers, "StudyInstanceUID")
    assert set(studies) == {S1, S3}
    a, c = studies[S1], studies[S3]
    assert (a.RetrieveAETitle, a.InstanceAvailability) == ("MINIPACS", "ONLINE")
    assert a.PatientAge == "" and len(a.ReferencedStudySequence) == 0
    assert list(a.ModalitiesInStudy) == ["CT", "SR"] and c.ModalitiesInStudy == "CR"
    assert (str(c.PatientName), c.StudyDescription) == ("Đặng^Minh Châu", "X quang")
    assert int(c.NumberOfStudyRelatedInstances) == 1
    assert all(x.SpecificCharacterSet == "ISO_IR 192" and x.QueryRetrieveLevel == "STUDY"
               for x in (a, c))
