#!/usr/bin/env python3
"""STUDY-level C-FIND latency at 100,000 studies, timed with DCMTK ``findscu``.

What it measures: the wall time of one ``/usr/bin/findscu -S`` process (process start,
association, one C-FIND, release) against ``pacs serve`` on SQLite and on PostgreSQL
(embedded, started here), for four queries: an exact PatientID, a one-day StudyDate range,
and a Vietnamese name prefix written without and with accents that matches a few dozen
studies. Every query asks for the usual worklist keys plus ModalitiesInStudy and
NumberOfStudyRelatedSeries/Instances. Median and p95 over ``--runs`` runs each.
``findscu`` runs with ``-v -sr``: it logs one line per answer (so the answers are counted)
but does not dump each answer's data set; ``--dump`` adds runs that do, as ``findscu`` does
by default (see :func:`findscu`).

The index is filled by a **benchmark-only bulk path**: rows go straight into the four
tables with SQLAlchemy Core ``executemany`` (one series and one instance per study, blob
keys that point nowhere), skipping the ingest service and the blob store. It builds the
same rows the ingest path would (names folded with :func:`pacs.dicom.fold_text`), only
fast. Never use it for real data. Names are synthetic, drawn with Vietnamese family-name
frequencies (Nguyễn ~38 %, Trần ~11 %, …).

Example::

    .venv/bin/python scripts/bench_find.py --studies 100000 --runs 30

``--floor`` adds a third column: the same ``findscu`` runs against a stand-in that replays,
at once, the bytes our server sent for that query (:class:`ClientFloor`): what the client
costs by itself on this machine, the floor under any server's figure.

``--stack-floor`` adds a fourth: the same ``findscu`` runs against our own DICOM stack with
no query behind it (:func:`serve_replay`: ``pacs.scp`` started as ``pacs serve`` starts it,
its C-FIND handler replaced by one that writes the answers the real handler gave the first
time). What pynetdicom and our patches to it cost per query, before any index work: the
floor under our server's figure.

``--server-side`` adds a table of what the server alone costs, with a client that costs
almost nothing (:class:`RawClient`: the PDUs ``findscu`` sent, replayed from Python over a
socket): time to the A-ASSOCIATE-AC, from the request to the first answer and to the final
response, the release, and the server's CPU per query (all its processes, from ``/proc``).
``findscu`` itself reads the answers more slowly than the server sends them, so these are
the figures that show a change on the server's side.

The machine it runs on is shared and noisy: to compare two versions, unpack the older one
beside this one (``mkdir /tmp/before && git archive HEAD~1 | tar -x -C /tmp/before``) and pass
``--baseline /tmp/before``: both servers then answer the same studies in turn, run by run, in
the same window. The older tree gets an index of its own (a second SQLite file, a second
PostgreSQL database), filled by its own ``fill()``, so a change of schema compares too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
try:
    from scripts import benchlib
except ImportError:  # run as `python scripts/bench_find.py`
    import benchlib  # type: ignore[no-redef]

from pacs.dicom import fold_text  # noqa: E402
from pacs.store.index import Index  # noqa: E402
from pacs.store.models import Instance, Patient, Series, Study  # noqa: E402

FINDSCU = "/usr/bin/findscu"
FAMILY = [("Nguyễn", 38), ("Trần", 11), ("Lê", 9.5), ("Phạm", 7), ("Hoàng", 5), ("Huỳnh", 4),
          ("Phan", 4), ("Vũ", 3.9), ("Võ", 3.9), ("Đặng", 2.1), ("Bùi", 2), ("Đỗ", 1.4),
          ("Hồ", 1.3), ("Ngô", 1.3), ("Dương", 1), ("Lý", 0.5)]
MIDDLE = ["Văn", "Thị", "Minh", "Đức", "Quốc", "Ngọc", "Thanh", "Hữu", "Xuân", "Hoài"]
GIVEN = ["An", "Anh", "Bình", "Châu", "Chi", "Cường", "Dũng", "Dung", "Duy", "Giang", "Hà", "Hải",
         "Hạnh", "Hiếu", "Hoa", "Hùng", "Hương", "Huy", "Khánh", "Khoa", "Lan", "Linh", "Long",
         "Mai", "My", "Nam", "Nga", "Ngân", "Nhung", "Phong", "Phúc", "Phương", "Quân", "Quang",
         "Sơn", "Tâm", "Thảo", "Thắng", "Thành", "Thủy", "Tiến", "Trang", "Trung", "Tú", "Tuấn",
         "Uyên", "Vân", "Việt", "Vinh", "Yến"]
MODALITIES = ["CT", "MR", "CR", "DX", "US", "MG"]
DAY0 = date(2024, 1, 1)
DAYS = 3 * 365
QUERIES = [
    ("exact PatientID", ["PatientID=BN0012345"]),
    # DAYS spreads the studies evenly: 100,000 over 3 years is ~91 a day, a busy hospital's load.
    ("one-day StudyDate range", ["StudyDate=20250315-20250315"]),
    ("name prefix, no accents", ["PatientName=dang quoc h*"]),
    ("name prefix, accents", ["PatientName=Đặng^Quốc H*"]),
]
QUERY_KEYS = ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]


def synthetic_rows(studies: int, seed: int = 1) -> tuple[list[dict[str, Any]], ...]:
    """The generated patient, study, series and instance rows (one series and one instance
    per study), as the index stores them; the same for a given ``seed``, so that
    ``bench_find_orthanc.py`` gives Orthanc exactly the studies our index gets."""
    rnd = random.Random(seed)
    now = datetime.now(timezone.utc)
    n_patients = int(studies * 0.7)
    names, weights = zip(*FAMILY)
    patients = []
    for i in range(n_patients):
        name = f"{rnd.choices(names, weights)[0]}^{rnd.choice(MIDDLE)} {rnd.choice(GIVEN)}"
        pid = f"BN{i:07d}"
        patients.append(dict(id=i + 1, patient_key="id:" + pid, patient_id=pid, patient_name=name,
                             patient_name_folded=fold_text(name),
                             birth_date=f"{rnd.randint(1930, 2020)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}",
                             sex=rnd.choice("MF"), created_at=now))
    study_rows, series_rows, inst_rows = [], [], []
    for i in range(studies):
        day = DAY0 + timedelta(days=rnd.randrange(DAYS))
        study_rows.append(dict(
            id=i + 1, study_instance_uid=f"1.2.826.0.1.3680043.10.2000.1.{i + 1}",
            patient_pk=rnd.randint(1, n_patients) if i >= n_patients else i + 1,
            study_date=day.strftime("%Y%m%d"), study_time=f"{rnd.randint(7, 18):02d}{rnd.randint(0, 59):02d}00",
            accession_number=f"ACC{i:08d}", study_description="Chụp cắt lớp", referring_physician_name="",
            referring_physician_folded="", study_id=str(i % 1000), created_at=now))
        series_rows.append(dict(
            id=i + 1, series_instance_uid=f"1.2.826.0.1.3680043.10.2000.2.{i + 1}", study_pk=i + 1,
            modality=rnd.choice(MODALITIES), series_number=1, series_description="",
            body_part_examined="", created_at=now, num_instances=1))
        # The counters Index._add keeps (models.Study, models.Series), for this bulk path.
        study_rows[-1].update(num_series=1, num_instances=1, modalities=series_rows[-1]["modality"])
        inst_rows.append(dict(
            id=i + 1, sop_instance_uid=f"1.2.826.0.1.3680043.10.2000.3.{i + 1}", series_pk=i + 1,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", instance_number=1,
            transfer_syntax_uid="1.2.840.10008.1.2.1", rows=512, columns=512, number_of_frames=1,
            size=0, sha256="0" * 64, blob_key=f"bench/{i + 1}", received_at=now, calling_ae="BENCH",
            origin="bench"))
    return patients, study_rows, series_rows, inst_rows


def fill(url: str, studies: int, seed: int = 1) -> None:
    """Benchmark-only bulk fill (see the module docstring)."""
    patients, study_rows, series_rows, inst_rows = synthetic_rows(studies, seed)
    index = Index(url, fsync=False)
    index.migrate()
    with index.engine.begin() as conn:
        for table, rows in ((Patient.__table__, patients), (Study.__table__, study_rows),
                            (Series.__table__, series_rows), (Instance.__table__, inst_rows)):
            for k in range(0, len(rows), 10000):
                conn.execute(table.insert(), rows[k: k + 10000])
        if index.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")
            for table in ("patient", "study", "series", "instance"):  # serial ids were given explicitly
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))")
        else:
            conn.exec_driver_sql("ANALYZE")
    index.dispose()


def findscu(port: int, keys: list[str], dump: bool = False, aec: str = "MINIPACS") -> tuple[float, int]:
    """One ``findscu`` process: its wall time in s and the number of pending answers it logged.

    ``-v`` logs one "Received Find Response N (Pending)" line per answer, which is how the
    answers are counted. ``-sr`` (``--hide-responses``) keeps it from also dumping every
    answer's data set to the log, about 1 KB of text per answer: 8–14 ms of the client's
    own time for the 98-answer day here, and nothing to do with the server. ``dump=True`` lets
    it dump them, as ``findscu`` does by default.
    """
    args = [FINDSCU, "-v", *([] if dump else ["-sr"]), "-S", "-aet", "BENCH", "-aec", aec,
            "-k", "QueryRetrieveLevel=STUDY", "-k", "SpecificCharacterSet=ISO_IR 192"]
    for k in QUERY_KEYS:
        if not any(q.startswith(k + "=") for q in keys):
            args += ["-k", k]
    for k in keys:
        args += ["-k", k]
    t0 = time.perf_counter()
    out = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True,
                         errors="replace")
    elapsed = time.perf_counter() - t0
    text = out.stdout + out.stderr
    if out.returncode != 0 or "Final Find Response (Success)" not in text:
        raise RuntimeError(f"findscu failed:\n{text[-2000:]}")
    return elapsed, text.count("(Pending)")


def _read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU (PS3.8 9.3.1: type, reserved, 4-byte big-endian length, body), or b''.

    ACKs at once before each read, as our server does (``pacs.scp.fastfind``): findscu writes
    a PDU's header and body in two writes with Nagle on, and the body would otherwise wait
    for our delayed ACK (40 ms)."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    head = b""
    while len(head) < 6:
        if quickack is not None:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return b""
        head += chunk
    body, want = [head], struct.unpack(">I", head[2:6])[0]
    while want:
        if quickack is not None:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        chunk = sock.recv(min(want, 1 << 20))
        if not chunk:
            return b""
        body.append(chunk)
        want -= len(chunk)
    return b"".join(body)


def _ends_request(pdu: bytes) -> bool:
    """A P-DATA-TF PDU whose last PDV is the last fragment of a data set (PS3.8 E.2)."""
    pos, last = 6, 0
    while pos + 6 <= len(pdu):
        length = struct.unpack(">I", pdu[pos:pos + 4])[0]
        last = pdu[pos + 5]
        pos += 4 + length
    return pdu[0] == 0x04 and last & 0x03 == 0x02


def record_exchange(upstream: int, keys: list[str]) -> tuple[list[bytes], list[bytes]]:
    """One ``findscu`` run passed through a proxy to the server on ``upstream``: the PDUs
    ``findscu`` sent (association request, query, release request) and those the server
    answered (A-ASSOCIATE-AC, every C-FIND response, A-RELEASE-RP), in order."""
    proxy = socket.create_server(("127.0.0.1", 0))
    sent: list[bytes] = []
    answered: list[bytes] = []

    def pump() -> None:
        client, _ = proxy.accept()
        server = socket.create_connection(("127.0.0.1", upstream))
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while pdu := _read_pdu(client):
            sent.append(pdu)
            server.sendall(pdu)
            if pdu[0] in (0x01, 0x05) or _ends_request(pdu):
                while True:  # the server's answers up to the one that ends this step
                    reply = _read_pdu(server)
                    answered.append(reply)
                    client.sendall(reply)
                    if not reply or reply[0] != 0x04 or _final_status(reply):
                        break
        client.close()
        server.close()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    findscu(proxy.getsockname()[1], keys)
    thread.join(30)
    proxy.close()
    return sent, answered


class ClientFloor:
    """What ``findscu`` costs by itself: a stand-in server that answers with bytes recorded
    from the real one, at once (no query, no encoding, no Python DICOM stack).

    :meth:`record` passes one ``findscu`` run through a proxy to the real server
    (:func:`record_exchange`) and keeps what the server sent (A-ASSOCIATE-AC, every C-FIND response PDU, A-RELEASE-RP); the
    listener then replays it to identical ``findscu`` runs: the answer to the association
    request, all the responses in one write once the query has arrived, the release reply.
    The figures it yields are the floor no server can go under on this machine and client.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def record(self, upstream: int, keys: list[str]) -> None:
        seen = record_exchange(upstream, keys)[1]
        self.answer = [seen[0], b"".join(seen[1:-1]), seen[-1]]

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                step = 0
                while (pdu := _read_pdu(conn)) and step < 3:
                    if pdu[0] == 0x04 and not _ends_request(pdu):
                        continue  # the query's command: its data set follows
                    conn.sendall(self.answer[step])
                    step += 1


def serve_replay(port: int, data_dir: Path) -> None:
    """Body of ``--serve-replay``: our C-FIND SCP on ``port``, answering from memory.

    The SCP is built as :func:`pacs.serve.dicom_worker` builds it (settings from the
    ``PACS_*`` environment, :func:`pacs.scp.server.start_scp`), but each distinct identifier
    is answered once by the real handler, on the real index, and from then on by writing the
    pending answers it wrote (:class:`pacs.scp.fastfind.AnswerWriter`, the path real answers
    take); pynetdicom sends the final response as usual. Runs until killed. For one query at
    a time (as the benchmark sends them): recording swaps ``AnswerWriter.add`` process-wide.
    """
    from pacs.config import load_settings
    from pacs.scp import fastfind
    from pacs.scp import server as scp_server
    from pacs.services import build_services

    recorded: dict[bytes, list[bytes]] = {}
    real = scp_server.handle_find

    def replay(event: Any, index: Any, settings: Any) -> Any:
        key = bytes(event.request.Identifier.getvalue())
        answers = recorded.get(key)
        writer = fastfind.AnswerWriter.for_event(event)
        if answers is None or writer is None:
            seen: list[bytes] = []
            add = fastfind.AnswerWriter.add

            def keep(self: fastfind.AnswerWriter, data: bytes) -> bool:
                seen.append(data)
                return add(self, data)

            fastfind.AnswerWriter.add = keep  # type: ignore[method-assign]
            try:
                yield from real(event, index, settings)
            finally:
                fastfind.AnswerWriter.add = add  # type: ignore[method-assign]
            recorded[key] = seen
            return
        for data in answers:
            writer.add(data)
        writer.flush()

    scp_server.handle_find = replay  # type: ignore[assignment]
    settings = load_settings(data_dir=str(data_dir), host="127.0.0.1", dicom_port=port)
    services = build_services(settings)
    scp_server.start_scp(settings, services.ingest)
    while True:
        time.sleep(3600)


@contextlib.contextmanager
def replay_server(data_dir: Path, env: dict[str, str]) -> Any:
    """``--serve-replay`` in a process of its own, yielded as its port once it answers C-ECHO."""
    port = benchlib.free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--serve-replay", str(port),
                                 "--data-dir", str(data_dir)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        benchlib.wait_for_echo("127.0.0.1", port, "MINIPACS", 60, proc=proc, log=log)
        yield port
    finally:
        benchlib.stop_process(proc)


class RawClient:
    """The server's own costs: ``findscu``'s request PDUs, recorded once through a proxy,
    replayed from here over a socket (no process start, no dictionary, no printing)."""

    PHASES = ("association", "first answer", "all answers", "release", "server CPU")

    def __init__(self, port: int, keys: list[str]) -> None:
        self.port = port
        self.requests = record_exchange(port, keys)[0]

    def run(self) -> tuple[float, float, float, float]:
        """One association: ms to the A-ASSOCIATE-AC, from the query to its first answer,
        to its final response, and for the release."""
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            s.sendall(self.requests[0])
            _read_pdu(s)
            t1 = time.perf_counter()
            s.sendall(b"".join(self.requests[1:-1]))
            first = None
            while True:
                reply = _read_pdu(s)
                if not reply:
                    raise RuntimeError("the server closed the association during the query")
                first = first or time.perf_counter()
                if _final_status(reply):
                    break
            t2 = time.perf_counter()
            s.sendall(self.requests[-1])
            _read_pdu(s)
            t3 = time.perf_counter()
        return (t1 - t0) * 1e3, (first - t1) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by the server process ``pid`` and its children."""
    root = psutil.Process(pid)
    total = 0.0
    for p in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _final_status(pdu: bytes) -> bool:
    """A P-DATA-TF carrying a C-FIND-RSP command whose Status is not Pending (PS3.7 C.4.1.1)."""
    pos = 6
    while pos + 6 <= len(pdu):
        length = struct.unpack(">I", pdu[pos:pos + 4])[0]
        control, value = pdu[pos + 5], pdu[pos + 6:pos + 4 + length]
        if control & 0x01:  # a command fragment, Implicit VR LE (PS3.7 6.3.1)
            at = 0
            while at + 8 <= len(value):
                group, elem, vlen = struct.unpack("<HHI", value[at:at + 8])
                if (group, elem) == (0x0000, 0x0900):
                    return struct.unpack("<H", value[at + 8:at + 10])[0] not in (0xFF00, 0xFF01)
                at += 8 + vlen
        pos += 4 + length
    return False


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def bench(label: str, url: str, workdir: Path, args: argparse.Namespace
          ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The findscu rows, and (``--server-side``) the server-side rows, for one index."""
    t0 = time.perf_counter()
    fill(url, args.studies)
    print(f"{label}: filled {args.studies} studies in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update({"PACS_DATABASE_URL": url, "PACS_FSYNC": "false", "PACS_LOG_LEVEL": "WARNING"})
    servers = [("", env)]
    if args.baseline:
        # The same studies served by another source tree (e.g. the commit before a change):
        # the two servers answer in turn, so both see the same noise. The baseline gets an
        # index of its own, filled by its own code, so that a schema change can be compared.
        baseline = Path(args.baseline).resolve()
        base_url = baseline_index(url, workdir / f"index-{label}-baseline.sqlite")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from bench_find import fill; "
                        "fill(sys.argv[1], int(sys.argv[2]))", base_url, str(args.studies)],
                       check=True, cwd=baseline / "scripts",
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                           [str(baseline), str(baseline / "scripts")])))
        print(f"{label}: filled the baseline's index in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        base_env = dict(env, PACS_DATABASE_URL=base_url, PYTHONPATH=os.pathsep.join(
            [str(baseline), *filter(None, [env.get("PYTHONPATH")])]))
        servers = [("baseline", base_env), ("current", env)]
    rows: list[tuple[str, ...]] = []
    inside: list[tuple[str, ...]] = []
    with contextlib.ExitStack() as stack:
        running = [(name, stack.enter_context(
            benchlib.pacs_server(workdir / f"data-{label}-{name or 'current'}", server_env)))
            for name, server_env in servers]
        ports = [(name, srv.dicom_port) for name, srv in running]
        if args.stack_floor:
            ports.append(("our stack, no query", stack.enter_context(
                replay_server(workdir / f"data-{label}-replay", env))))
        floor = ClientFloor() if args.floor else None
        if floor is not None:
            ports.append(("findscu alone", floor.port))
        clients = [("-v -sr", False), *([("-v, answers dumped", True)] if args.dump else [])]
        for query, keys in QUERIES:
            runs = [(name, port, client, dump) for name, port in ports for client, dump in clients]
            times: dict[tuple[str, str], list[float]] = {(n, c): [] for n, _, c, _ in runs}
            counts: dict[tuple[str, str], set[int]] = {(n, c): set() for n, _, c, _ in runs}
            if floor is not None:
                floor.record(running[-1][1].dicom_port, keys)
            for _name, port in ports:
                findscu(port, keys)  # warm-up (connection pool, page cache)
            for _ in range(args.runs):
                for name, port, client, dump in runs:
                    elapsed, n = findscu(port, keys, dump)
                    times[name, client].append(elapsed * 1000)
                    counts[name, client].add(n)
            for key in times:
                rows.append((f"{label} {key[0]}".strip(), query, key[1],
                             "/".join(map(str, sorted(counts[key]))),
                             f"{statistics.median(times[key]):.1f}", f"{p95(times[key]):.1f}"))
            if args.server_side:
                inside += server_side(label, query, keys, running, args.runs)
    return rows, inside


def baseline_index(url: str, sqlite_path: Path) -> str:
    """An empty index beside ``url`` for ``--baseline``: a second SQLite file, or a second
    database on the same PostgreSQL server."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:///{sqlite_path}"
    import psycopg
    from psycopg import sql

    name = f"{parsed.database}_baseline"
    libpq = parsed.set(drivername="postgresql", database="postgres")
    with psycopg.connect(libpq.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0")
                     .format(sql.Identifier(name)))
    return parsed.set(database=name).render_as_string(hide_password=False)


def server_side(label: str, query: str, keys: list[str], running: list[tuple[str, Any]],
                runs: int) -> list[tuple[str, ...]]:
    """Medians of :meth:`RawClient.run` and the server CPU per query, servers alternated."""
    clients = [(name, srv, RawClient(srv.dicom_port, keys)) for name, srv in running]
    phases: dict[str, list[tuple[float, ...]]] = {name: [] for name, _, _ in clients}
    cpu = {name: 0.0 for name, _, _ in clients}
    for _ in range(max(runs, 50)):
        for name, srv, client in clients:
            before = server_cpu(srv.pid)
            timings = client.run()
            # The association thread may still be ending: its CPU counts for this query.
            time.sleep(0.01)
            cpu[name] += server_cpu(srv.pid) - before
            phases[name].append(timings)
    out = []
    for name, _, _ in clients:
        n = len(phases[name])
        medians = [statistics.median(col) for col in zip(*phases[name])]
        out.append((f"{label} {name}".strip(), query, *(f"{m:.2f}" for m in medians),
                    f"{cpu[name] / n * 1000:.1f}"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also serve the same studies from the source tree DIR (put first "
                             "on PYTHONPATH; its own index, filled by its own code) and "
                             "alternate the two servers run by run")
    parser.add_argument("--floor", action="store_true",
                        help="also time findscu against a stand-in that replays the answers "
                             "recorded from our server at once: the client's own cost")
    parser.add_argument("--stack-floor", action="store_true",
                        help="also time findscu against our DICOM stack with no query behind "
                             "it (answers recorded from the real handler, replayed)")
    parser.add_argument("--serve-replay", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--server-side", action="store_true",
                        help="also time the server alone, with a raw-socket client replaying "
                             "findscu's request, and its CPU per query")
    parser.add_argument("--dump", action="store_true",
                        help="also time findscu dumping every answer's data set to its log "
                             "(its default), beside the runs that only count the answers (-sr)")
    args = parser.parse_args()
    if args.serve_replay:
        serve_replay(args.serve_replay, args.data_dir)
        return 0
    workdir = benchlib.fresh_workdir("minipacs-bench-find-")
    rows: list[tuple[str, ...]] = []
    server_rows: list[tuple[str, ...]] = []
    for backend in args.backends.split(","):
        with contextlib.ExitStack() as stack:
            if backend == "sqlite":
                url = f"sqlite:///{workdir / 'index.sqlite'}"
            else:
                url = stack.enter_context(benchlib.embedded_postgres(workdir / "pg", "pacs")).url
            found, inside = bench(backend, url, workdir, args)
            rows += found
            server_rows += inside
    print(f"\nSTUDY-level C-FIND, {args.studies:,} studies, {args.runs} runs each, "
          "findscu process start included (ms)\n")
    print("| index | query | findscu | answers | median | p95 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if server_rows:
        print("\nThe server alone (a raw-socket client replays findscu's request; medians in ms, "
              "CPU of all server processes per query in ms)\n")
        print("| index | query | " + " | ".join(RawClient.PHASES) + " |")
        print("|---|---|" + "---|" * len(RawClient.PHASES))
        for r in server_rows:
            print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
