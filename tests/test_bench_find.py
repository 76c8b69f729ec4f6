"""``scripts/bench_find.py`` and ``scripts/bench_find_orthanc.py``: Orthanc gets the studies our index gets."""

from __future__ import annotations

import io
import os

import pydicom

from scripts import bench_find, bench_find_orthanc


def _without_clock(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("created_at", "received_at")} for r in rows]


def test_synthetic_rows_are_the_same_for_a_seed() -> None:
    first = [_without_clock(t) for t in bench_find.synthetic_rows(300)]
    again = [_without_clock(t) for t in bench_find.synthetic_rows(300)]
    other = [_without_clock(t) for t in bench_find.synthetic_rows(300, seed=2)]
    assert first == again
    assert first[0] != other[0]  # the names come from the seed
    patients, studies, series, instances = first
    assert (len(patients), len(studies), len(series), len(instances)) == (210, 300, 300, 300)


def test_orthanc_instances_carry_the_generated_study() -> None:
    patients, studies, series, _ = bench_find.synthetic_rows(50)
    files = bench_find_orthanc.instances(50)
    assert len(files) == 50
    for raw, st, se in zip(files, studies, series):
        ds = pydicom.dcmread(io.BytesIO(raw))
        pt = patients[st["patient_pk"] - 1]
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == pt["patient_name"]  # Vietnamese, UTF-8
        assert (ds.PatientID, ds.StudyDate, ds.Modality) == (pt["patient_id"], st["study_date"], se["modality"])
        assert ds.StudyInstanceUID == st["study_instance_uid"]
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert any(not n.isascii() for n in (str(pydicom.dcmread(io.BytesIO(f)).PatientName) for f in files))


def test_stack_floor_replays_the_real_answers_from_memory(tmp_path) -> None:
    """``--stack-floor``: the first query is answered by the real handler, the same query
    again byte for byte from memory (the index no longer has the studies by then)."""
    import sqlite3

    db = tmp_path / "index.sqlite"
    bench_find.fill(f"sqlite:///{db}", 300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update({"PACS_DATABASE_URL": f"sqlite:///{db}", "PACS_FSYNC": "false"})
    keys = ["StudyDate=20240101-20240131"]
    with bench_find.replay_server(tmp_path / "replay", env) as port:
        _, real = bench_find.record_exchange(port, keys)
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA foreign_keys = OFF")
            for table in ("instance", "series", "study", "patient"):
                conn.execute(f"DELETE FROM {table}")
        _, replayed = bench_find.record_exchange(port, keys)
        _, other = bench_find.record_exchange(port, ["StudyDate=20240201-20240229"])
    pending = [p for p in real if p[0] == 0x04 and not bench_find._final_status(p)]
    assert len(pending) >= 3  # 300 studies over 3 years: about 8 a month
    assert replayed == real
    # A query it never saw goes to the real handler: the emptied index has nothing.
    assert not [p for p in other if p[0] == 0x04 and not bench_find._final_status(p)]
