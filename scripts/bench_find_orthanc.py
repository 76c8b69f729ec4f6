#!/usr/bin/env python3
"""The Orthanc side of ``bench_find.py``: the same C-FIND queries, timed the same way, against
Debian's Orthanc 1.10, for a same-window bar.

Uploads the studies ``bench_find.py`` generates (:func:`bench_find.synthetic_rows`, same seed:
the same patients, names, dates and IDs; one header-only instance per study, no pixel data)
to an Orthanc through its REST API, then times ``findscu -S`` at STUDY level exactly as
``bench_find.py`` does (:func:`bench_find.findscu`: process start included, ``-v -sr``, and
with ``--dump`` also dumping every answer). The exact-ID query asks for a patient that exists
at this size. Orthanc keeps its defaults, except that it allows C-FIND from any AE and
answers in UTF-8 (``DefaultEncoding``: its default, Latin-1, cannot hold Vietnamese names).

Orthanc (``apt-get install -y orthanc``) has no bind-address option and listens on every
interface, so run it and this client in a private network namespace (root). DCMTK under
Orthanc and under ``findscu`` leaves Nagle's algorithm on unless ``TCP_NODELAY=1`` is in the
environment; without it every query here took 85-130 ms, so both get it::

    mkdir -p /tmp/orthanc-f/db && cat > /tmp/orthanc-f/orthanc.json <<'JSON'
    {"Name": "bench", "StorageDirectory": "/tmp/orthanc-f/db", "IndexDirectory": "/tmp/orthanc-f/db",
     "DicomAet": "ORTHANC", "DicomPort": 4244, "HttpPort": 8044, "RemoteAccessAllowed": false,
     "DicomAlwaysAllowFind": true, "DefaultEncoding": "Utf8", "Plugins": [], "StorageCompression": false}
    JSON
    unshare -n sh -c 'ip link set lo up; export TCP_NODELAY=1
        Orthanc /tmp/orthanc-f/orthanc.json >/tmp/orthanc-f/log 2>&1 &
        pid=$!; .venv/bin/python scripts/bench_find_orthanc.py --studies 2000 --http-port 8044 \\
        --dicom-port 4244; kill $pid; wait $pid'

The studies stay in ``/tmp/orthanc-f/db``: a second run against the same Orthanc uploads
nothing (it checks the study count first).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
try:
    from scripts import bench_find
except ImportError:  # run as `python scripts/bench_find_orthanc.py`
    import bench_find  # type: ignore[no-redef]


#: Which generated row each attribute of a file comes from: DICOM keyword -> index column.
FROM_ROWS = {
    "patient": {"PatientName": "patient_name", "PatientID": "patient_id",
                "PatientBirthDate": "birth_date", "PatientSex": "sex"},
    "study": {"StudyInstanceUID": "study_instance_uid", "StudyDate": "study_date",
              "StudyTime": "study_time", "AccessionNumber": "accession_number",
              "StudyDescription": "study_description", "StudyID": "study_id"},
    "series": {"SeriesInstanceUID": "series_instance_uid", "Modality": "modality",
               "SeriesNumber": "series_number"},
    "instance": {"SOPClassUID": "sop_class_uid", "SOPInstanceUID": "sop_instance_uid",
                 "InstanceNumber": "instance_number"},
}


def instances(studies: int) -> list[bytes]:
    """One DICOM Part 10 file per generated study, in memory."""
    patients, study_rows, series_rows, inst_rows = bench_find.synthetic_rows(studies)
    out = []
    for st, se, ins in zip(study_rows, series_rows, inst_rows):
        rows = {"patient": patients[st["patient_pk"] - 1], "study": st, "series": se, "instance": ins}
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        for level, columns in FROM_ROWS.items():
            for keyword, column in columns.items():
                setattr(ds, keyword, rows[level][column])
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def rest(port: int, method: str, path: str, body: bytes | None = None) -> object:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {resp.status} {data[:200]!r}")
    return json.loads(data)


def upload(port: int, files: list[bytes], connections: int = 4) -> None:
    """POST every file to ``/instances`` over ``connections`` keep-alive connections."""
    errors: list[str] = []

    def run(part: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body in part:
            conn.request("POST", "/instances", body=body)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}")
                return

    threads = [threading.Thread(target=run, args=(files[k::connections],)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"upload to Orthanc failed: {', '.join(errors)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--http-port", type=int, default=8044)
    ap.add_argument("--dicom-port", type=int, default=4244)
    ap.add_argument("--aet", default="ORTHANC")
    ap.add_argument("--dump", action="store_true", help="also time findscu dumping every answer")
    args = ap.parse_args()
    for _ in range(150):  # wait for Orthanc
        try:
            have = rest(args.http_port, "GET", "/statistics")["CountStudies"]  # type: ignore[index]
            break
        except OSError:
            time.sleep(0.2)
    else:
        raise SystemExit(f"no Orthanc on 127.0.0.1:{args.http_port}")
    if have != args.studies:
        if have:
            raise SystemExit(f"this Orthanc holds {have} studies, not {args.studies}: use an empty one")
        t0 = time.perf_counter()
        files = instances(args.studies)
        upload(args.http_port, files)
        have = rest(args.http_port, "GET", "/statistics")["CountStudies"]  # type: ignore[index]
        if have != args.studies:
            raise SystemExit(f"Orthanc holds {have} studies after the upload, not {args.studies}")
        print(f"uploaded {len(files)} studies in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    n_patients = int(args.studies * 0.7)  # as synthetic_rows makes them
    queries = [(name, [f"PatientID=BN{min(12345, n_patients - 1):07d}"] if name == "exact PatientID" else keys)
               for name, keys in bench_find.QUERIES]
    clients = [("-v -sr", False), *([("-v, answers dumped", True)] if args.dump else [])]
    print(f"\nOrthanc, STUDY-level C-FIND, {args.studies:,} studies, {args.runs} runs each, "
          "findscu process start included (ms)\n")
    print("| query | findscu | answers | median | p95 |")
    print("|---|---|---|---|---|")
    for name, keys in queries:
        bench_find.findscu(args.dicom_port, keys, aec=args.aet)  # warm-up
        for client, dump in clients:
            times, counts = [], set()
            for _ in range(args.runs):
                elapsed, n = bench_find.findscu(args.dicom_port, keys, dump, aec=args.aet)
                times.append(elapsed * 1000)
                counts.add(n)
            print(f"| {name} ({keys[0]}) | {client} | {'/'.join(map(str, sorted(counts)))} | "
                  f"{statistics.median(times):.1f} | {bench_find.p95(times):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
