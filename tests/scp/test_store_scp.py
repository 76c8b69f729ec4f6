"""C-ECHO / C-STORE end to end: dcmtk and pynetdicom send to the real ``pacs serve``.

Every test here runs twice through ``pacs_server``: filesystem + SQLite and S3 + PostgreSQL.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, _config

from pacs.services import Services
from tests.fixtures.dcmtk import DcmtkTools, run_tool
from tests.fixtures.server import PacsServer, backend_env, make_server
from tests.test_dicom import minimal, part10

# Send files as they are on disk (undecoded), like a modality with a broken encoder would.
_config.STORE_SEND_CHUNKED_DATASET = True

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_dicom"

#: dcmtk storescu proposal flag that makes it send a file in its own transfer syntax.
PROPOSE = {
    "1.2.840.10008.1.2": ["-xi"],
    "1.2.840.10008.1.2.1": ["-xe"],
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    "1.2.840.10008.1.2.4.57": ["-xs"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.5": ["-xr"],
}


def sample_files() -> list[Path]:
    return sorted(SAMPLES.rglob("*.dcm"))


def storescu(dcmtk: DcmtkTools, server: PacsServer, files: list[Path], *flags: str,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_tool(
        [dcmtk.storescu, "-aet", "MODALITY", "-aec", server.ae_title, "-v", *flags,
         "127.0.0.1", str(server.dicom_port), *map(str, files)],
        timeout=timeout,
    )


def successes(out: subprocess.CompletedProcess[str]) -> int:
    return (out.stdout + out.stderr).count("Received Store Response (Success)")


def scu_store(server: PacsServer, items: list[Dataset | str | Path]) -> list[Dataset]:
    """Send datasets or raw files (a path is sent as is, undecoded) on one association."""
    ae = AE(ae_title="PYSCU")
    pairs: set[tuple[str, str]] = set()
    for item in items:
        if isinstance(item, Dataset):
            if "TransferSyntaxUID" not in getattr(item, "file_meta", {}):
                part10(item)  # gives it file meta (explicit VR little endian)
            meta = item.file_meta
        else:
            meta = pydicom.dcmread(item, stop_before_pixels=True, force=True).file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, ts in sorted(pairs):  # one transfer syntax per context: no guessing
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(item) for item in items]
    finally:
        assoc.release()


def echo_ok(server: PacsServer, dcmtk: DcmtkTools) -> bool:
    out = run_tool([dcmtk.echoscu, "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port)])
    return out.returncode == 0


def test_echo(pacs_server: PacsServer, dcmtk: DcmtkTools) -> None:
    assert echo_ok(pacs_server, dcmtk)


def test_storescu_sends_every_sample_in_its_own_syntax(pacs_server: PacsServer, dcmtk: DcmtkTools) -> None:
    files = sample_files()
    by_ts: dict[str, list[Path]] = defaultdict(list)
    source: dict[str, pydicom.FileDataset] = {}
    for f in files:
        ds = pydicom.dcmread(f)
        by_ts[str(ds.file_meta.TransferSyntaxUID)].append(f)
        source[ds.SOPInstanceUID] = ds
    required = {
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
    }
    assert required <= set(by_ts), f"sample_dicom lacks {required - set(by_ts)}"
    for ts, group in by_ts.items():
        out = storescu(dcmtk, pacs_server, group, *PROPOSE[ts])
        assert out.returncode == 0, out.stderr
        assert successes(out) == len(group), out.stderr

    services = pacs_server.services()
    try:
        assert services.index.counts().instances == len(files)
        for uid, src in source.items():
            rec = services.index.get_instance(uid)
            assert rec is not None, uid
            raw = services.blobs.get(rec.blob_key)
            # The blob is exactly what was acknowledged ...
            assert hashlib.sha256(raw).hexdigest() == rec.sha256
            assert len(raw) == rec.size
            # ... in the syntax it was sent in, with the same elements and pixel bytes.
            got = pydicom.dcmread(io.BytesIO(raw))
            assert str(got.file_meta.TransferSyntaxUID) == str(src.file_meta.TransferSyntaxUID)
            assert rec.transfer_syntax_uid == str(src.file_meta.TransferSyntaxUID)
            assert got.get("PixelData") == src.get("PixelData")
            assert got.PatientName == src.PatientName
            # dcmtk drops group lengths and trailing padding (FFFC,FFFC) when it sends.
            def tags(d: Dataset) -> set[int]:
                return {int(t) for t in d.keys() if t.element and t != 0xFFFCFFFC}

            assert tags(got) == tags(src)
    finally:
        services.close()


def test_vietnamese_names_indexed_in_utf8(pacs_server: PacsServer) -> None:
    ds = minimal(SpecificCharacterSet="ISO_IR 192", PatientName="Đặng^Minh Châu", PatientID="VN-42",
                 StudyDescription="CT ngực có cản quang")
    statuses = scu_store(pacs_server, [ds])
    assert statuses[0].Status == 0x0000
    services = pacs_server.services()
    try:
        from sqlalchemy import select

        from pacs.store.models import Patient, Study

        with services.index.session() as s:
            p = s.execute(select(Patient).where(Patient.patient_id == "VN-42")).scalar_one()
            st = s.execute(select(Study).where(Study.patient_pk == p.id)).scalar_one()
        assert p.patient_name == "Đặng^Minh Châu"
        assert p.patient_name_folded == "DANG MINH CHAU"
        assert st.study_description == "CT ngực có cản quang"
    finally:
        services.close()
    assert "Đặng" not in pacs_server.log and "DANG MINH" not in pacs_server.log


def test_bad_input_gets_failure_status_and_server_goes_on(
    pacs_server: PacsServer, dcmtk: DcmtkTools, tmp_path: Path
) -> None:
    # Garbage after a valid file meta, as a broken modality would send it (sent undecoded).
    garbage = tmp_path / "garbage.dcm"
    head = part10(minimal())
    meta_end = 132 + 12 + int.from_bytes(head[140:144], "little")
    garbage.write_bytes(head[:meta_end] + b"\xde\xad\xbe\xef" * 5000)
    truncated = Path(get_testdata_file("MR_truncated.dcm"))
    no_uid = minimal()
    del no_uid.StudyInstanceUID
    statuses = scu_store(pacs_server, [garbage, truncated, no_uid])
    codes = [s.Status for s in statuses]
    assert all(0xC000 <= c <= 0xCFFF for c in codes), [hex(c) for c in codes]
    assert "StudyInstanceUID" in str(statuses[2].get("ErrorComment", ""))
    assert echo_ok(pacs_server, dcmtk)
    services = pacs_server.services()
    try:
        assert services.index.counts().instances == 0
        assert list(services.blobs.keys()) == []
    finally:
        services.close()
    assert "cannot understand" in pacs_server.log  # the reason is logged


def test_resend_same_is_idempotent_different_is_kept_first(pacs_server: PacsServer) -> None:
    ds = minimal(PatientName="First^Copy", PatientID="DUP")
    s1 = scu_store(pacs_server, [ds, ds])
    assert [s.Status for s in s1] == [0x0000, 0x0000]
    ds.PatientName = "Second^Copy"
    s2 = scu_store(pacs_server, [ds])[0]
    assert s2.Status == 0xB006  # warning: elements discarded (the copy we already have is kept)
    assert "kept the first" in str(s2.ErrorComment)
    services = pacs_server.services()
    try:
        rec = services.index.get_instance(ds.SOPInstanceUID)
        assert rec is not None
        assert pydicom.dcmread(io.BytesIO(services.blobs.get(rec.blob_key))).PatientName == "First^Copy"
        assert services.index.counts().instances == 1
        assert len(list(services.blobs.keys())) == 1
    finally:
        services.close()
    assert "kept the first copy" in pacs_server.log


def test_huge_private_element_refused(request: pytest.FixtureRequest, backend: str, tmp_path: Path,
                                      dcmtk: DcmtkTools) -> None:
    env = backend_env(request, backend) | {"PACS_MAX_INSTANCE_MB": "16"}
    server = make_server(tmp_path / "data", env).start()
    try:
        big = minimal()
        big.private_block(0x0099, "ACME HUGE", create=True).add_new(0x01, "OB", b"\x00" * (40 * 2**20))
        small = minimal()
        small.private_block(0x0099, "ACME HUGE", create=True).add_new(0x01, "OB", b"\x01" * (4 * 2**20))
        statuses = scu_store(server, [big, small])
        assert statuses[0].Status == 0xA700  # refused: out of resources
        assert statuses[1].Status == 0x0000  # a large but allowed one still goes in
        assert echo_ok(server, dcmtk)
        services = server.services()
        try:
            assert services.index.get_instance(big.SOPInstanceUID) is None
            assert services.index.counts().instances == 1
        finally:
            services.close()
    finally:
        server.stop()


def test_restart_keeps_everything(pacs_server: PacsServer, dcmtk: DcmtkTools) -> None:
    files = [f for f in sample_files() if pydicom.dcmread(f, stop_before_pixels=True)
             .file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"]
    out = storescu(dcmtk, pacs_server, files, "-xe")
    assert successes(out) == len(files)
    assert pacs_server.stop() == 0
    assert "pacs: stopped" in pacs_server.log
    pacs_server.start()
    services = pacs_server.services()
    try:
        assert services.index.counts().instances == len(files)
    finally:
        services.close()
    check = pacs_server.pacs("verify", "-q")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"checked: {len(files)}  missing: 0  corrupt: 0  orphans: 0" in check.stdout


def test_concurrent_associations_overlapping_studies(
    pacs_server: PacsServer, dcmtk: DcmtkTools, ct_series: Path
) -> None:
    """4 storescu processes send overlapping halves of one series at once."""
    files = sorted(ct_series.glob("*.dcm"))
    n = len(files)
    shares = [files[: n // 2], files[n // 4 : 3 * n // 4], files[n // 2 :], files[::-1]]
    procs = [
        subprocess.Popen(
            [dcmtk.storescu, "-aet", f"MOD{i}", "-aec", pacs_server.ae_title, "-v", "-xe", "127.0.0.1",
             str(pacs_server.dicom_port), *map(str, share)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i, share in enumerate(shares)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for share, out in zip(shares, outs):
        assert out.count("Received Store Response (Success)") == len(share), out[-2000:]
    services = pacs_server.services()
    try:
        c = services.index.counts()
        assert (c.patients, c.studies, c.series, c.instances) == (1, 1, 1, n)
        assert len(list(services.blobs.keys())) == n  # losers of each race removed their blob
    finally:
        services.close()


def send_in_background(dcmtk: DcmtkTools, server: PacsServer, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [dcmtk.storescu, "-aec", server.ae_title, "-v", "-xe", "127.0.0.1",
         str(server.dicom_port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_instances(services: Services, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while services.index.counts().instances < count and time.monotonic() < deadline:
        time.sleep(0.005)


def test_sigterm_finishes_the_running_association(
    pacs_server: PacsServer, dcmtk: DcmtkTools, ct_series: Path
) -> None:
    files = sorted(ct_series.glob("*.dcm"))
    proc = send_in_background(dcmtk, pacs_server, files)
    # Wait until the association is under way, then ask the server to stop.
    services = pacs_server.services()
    try:
        wait_for_instances(services, 3)
        assert pacs_server.stop() == 0
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, out[-2000:]
        assert out.count("Received Store Response (Success)") == len(files)
        assert services.index.counts().instances == len(files)
    finally:
        services.close()


def test_kill_9_mid_send_leaves_verify_clean(
    pacs_server: PacsServer, dcmtk: DcmtkTools, ct_series: Path
) -> None:
    files = sorted(ct_series.glob("*.dcm"))
    proc = send_in_background(dcmtk, pacs_server, files)
    services = pacs_server.services()
    try:
        wait_for_instances(services, len(files) // 3)
        pacs_server.kill()
        out = proc.communicate(timeout=120)[0]
        acknowledged = out.count("Received Store Response (Success)")
        stored = services.index.counts().instances
        # Everything acknowledged is indexed; at most the in-flight one is indexed unacknowledged.
        assert acknowledged <= stored <= acknowledged + 1
        assert stored < len(files)
    finally:
        services.close()
    check = pacs_server.pacs("verify", "-q")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "missing: 0  corrupt: 0" in check.stdout
    # A fresh start serves again and a re-send completes the series.
    pacs_server.start()
    out = storescu(dcmtk, pacs_server, files, "-xe")
    assert successes(out) == len(files), pacs_server.log[-3000:]
    services = pacs_server.services()
    try:
        assert services.index.counts().instances == len(files)
    finally:
        services.close()


def test_s3_stopped_mid_send(request: pytest.FixtureRequest, tmp_path: Path, ct_series: Path,
                             dcmtk: DcmtkTools) -> None:
    """The object store goes away during a send: failures for what was not stored, no lies."""
    s3 = request.getfixturevalue("s3_server")
    env = backend_env(request, "s3-postgres")
    server = make_server(tmp_path / "data", env).start()
    files = sorted(ct_series.glob("*.dcm"))[:16]
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
        assert assoc.is_established
        results: dict[str, int] = {}
        try:
            for i, f in enumerate(files):
                if i == 6:
                    s3.stop()
                t0 = time.monotonic()
                status = assoc.send_c_store(f)
                assert time.monotonic() - t0 < 30  # a failure comes back, not a hang
                results[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID] = status.Status
        finally:
            assoc.release()
        ok = {uid for uid, st in results.items() if st == 0x0000}
        failed = {uid for uid, st in results.items() if st != 0x0000}
        assert len(ok) == 6
        assert {results[u] for u in failed} == {0xA700}
        services = server.services()
        try:
            indexed = {u for u in results if services.index.get_instance(u) is not None}
        finally:
            services.close()
        assert indexed == ok
        s3.start()
        out = storescu(dcmtk, server, files, "-xe")
        assert successes(out) == len(files), out.stderr
        services = server.services()
        try:
            assert services.index.counts().instances == len(files)
        finally:
            services.close()
        check = server.pacs("verify", "-q")
        assert check.returncode == 0 and "missing: 0  corrupt: 0" in check.stdout, check.stdout
    finally:
        if not s3.running:
            s3.start()
        server.stop()
