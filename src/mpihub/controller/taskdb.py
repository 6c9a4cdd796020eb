"""The durable task store (``--db sqlite``): every task's record and payloads in SQLite.

The Hub keeps live tasks and a bounded cache of finished ones in memory; this store
keeps them all, in ``<profile>/db/``, so that ``get_result``, ``resubmit`` and
``db_query`` work for another or a later client, after the memory cache has moved on,
and after the controller restarts. The event loop only enqueues what happened; one
writer thread turns it into batched transactions (WAL, one commit per batch), so the
task round trip never waits for the disk. A read sees every event before it: it waits
for the writer while the writer is behind, and not at all once it has caught up.

Size limits: a payload above ``payload_limit`` bytes keeps its record but not its
bytes; past ``byte_limit`` bytes in all, the oldest payloads go first, fetched results
before unfetched ones, and a result evicted before anyone fetched it is logged and
marked, so ``get_result`` says so instead of calling it unknown.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import sqlite3
import struct
import threading
import time
from collections import namedtuple
from pathlib import Path
from typing import Any, Iterable, Iterator

import msgpack

from .. import config
from ..protocol import wire
from .records import TASK_FIELDS, EngineRecord, TaskRecord

log = logging.getLogger("mpihub.controller.taskdb")

SCHEMA_VERSION = 1
_COLUMNS = TASK_FIELDS + ("fetched", "evicted", "request_of", "request", "reply", "request_bytes", "reply_bytes")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    msg_id TEXT PRIMARY KEY, queue TEXT, engine_id INTEGER, client TEXT, submitted REAL, started REAL,
    completed REAL, received REAL, status TEXT, stdout TEXT, stderr TEXT, ename TEXT, resubmitted TEXT,
    fetched INTEGER DEFAULT 0, evicted INTEGER DEFAULT 0, request_of TEXT, request BLOB, reply BLOB,
    request_bytes INTEGER DEFAULT 0, reply_bytes INTEGER DEFAULT 0, signed_by TEXT);
CREATE INDEX IF NOT EXISTS tasks_by_completion ON tasks (completed);
CREATE TABLE IF NOT EXISTS engines (id INTEGER PRIMARY KEY, uuid BLOB, info BLOB, registered REAL);
INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');
"""
#: Seconds the writer lets events gather after the first of a batch.
GROUP_COMMIT = 0.005
#: Columns a query may narrow in SQL before the exact test in Python.
_RANGE_SQL = {"$lt": "<", "$gt": ">", "$lte": "<=", "$gte": ">="}

StoredRecord = namedtuple("StoredRecord", TASK_FIELDS)
#: A task that was not finished when its controller stopped: what a restore puts back.
PendingTask = namedtuple("PendingTask", "msg_id queue engine_id client submitted request nbytes")
#: An engine in the table when its controller stopped.
StoredEngine = namedtuple("StoredEngine", "id uuid info registered")


def pack_frames(stored: Any) -> bytes:
    """One blob from a payload kept as one frame or a list of frames (length-prefixed)."""
    frames = stored if isinstance(stored, list) else [stored]
    parts = [struct.pack("<I", len(frames))]
    for frame in frames:
        parts += [struct.pack("<Q", memoryview(frame).nbytes), frame]
    return b"".join(parts)


def unpack_frames(blob: bytes) -> list[bytes]:
    view = memoryview(blob)
    (count,), offset, frames = struct.unpack_from("<I", view), 4, []
    for _ in range(count):
        (size,) = struct.unpack_from("<Q", view, offset)
        frames.append(bytes(view[offset + 8:offset + 8 + size]))
        offset += 8 + size
    return frames


def sql_prefilter(query: dict) -> tuple[str, list]:
    """A WHERE clause that keeps every row the query can match (a superset): range and
    equality tests on known columns; the exact test runs in Python after it."""
    clauses, params = [], []
    for key, spec in query.items():
        if key not in TASK_FIELDS or key == "client":
            continue
        if not isinstance(spec, dict):
            spec = {"$eq": spec}
        for op, operand in spec.items():
            if not isinstance(operand, (int, float, str)) or isinstance(operand, bool):
                continue
            if op in _RANGE_SQL:
                clauses.append(f"{key} {_RANGE_SQL[op]} ?")
                params.append(operand)
            elif op == "$eq":
                clauses.append(f"{key} = ?")
                params.append(operand)
    return " AND ".join(clauses) or "1", params


DB_KINDS = ("memory", "sqlite")


def db_path(profile_dir, cluster_id: str | None, part: str = "") -> Path:
    """``<profile>/db/mpihub-tasks[-<cluster_id>][-<part>].sqlite``."""
    name = "-".join(["mpihub-tasks", *(x for x in (cluster_id, part) if x)])
    return Path(profile_dir or config.default_profile_dir()) / "db" / f"{name}.sqlite"


def open_db(kind: str, key: str, profile_dir, cluster_id: str | None, part: str = "") -> "TaskDB | None":
    """The durable store a controller process asked for (None: memory only)."""
    if kind not in DB_KINDS:
        raise ValueError(f"--db is one of {', '.join(DB_KINDS)}, not {kind!r}")
    if kind == "memory":
        return None
    return TaskDB(db_path(profile_dir, cluster_id, part), config.DB_BYTES, config.DB_PAYLOAD_BYTES, key)


class TaskDB:
    """``key`` signs this controller's messages. Payloads are stored as signed; the store
    keeps each key it has seen (the file is as private as a connection file), so a later
    controller with a new key can check old payloads and hand them out signed anew."""

    def __init__(self, path: str | Path, byte_limit: int, payload_limit: int, key: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.byte_limit = byte_limit
        self.payload_limit = payload_limit
        self._reader = self._open()
        self._reader.executescript(_SCHEMA)
        self._check_protocol()
        self._reader.commit()
        self.path.chmod(0o600)
        self.signer = wire.Signer(key)
        self.key_id = hashlib.sha256(key.encode()).hexdigest()[:16]
        self._reader.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (f"key:{self.key_id}", key))
        self._old_signers: dict[str, wire.Signer] = {}
        (self.nbytes,) = self._reader.execute(
            "SELECT COALESCE(SUM(request_bytes + reply_bytes), 0) FROM tasks WHERE evicted = 0").fetchone()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._enqueued = 0  # events the loop thread enqueued (it alone writes this)
        self._committed = 0  # events the writer has committed (it alone writes this)
        self._failed: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="mpihub-taskdb", daemon=True)
        self._writer.start()
        log.info("task store %s (%.1f MB of payloads)", self.path, self.nbytes / 1e6)

    def _check_protocol(self) -> None:
        """Stored payloads are messages of the protocol that wrote them (a file from
        before this row was kept is of version 1): another version is refused by name."""
        row = self._reader.execute("SELECT value FROM meta WHERE name = 'protocol'").fetchone()
        if row is None:
            used = self._reader.execute("SELECT EXISTS (SELECT 1 FROM tasks) OR EXISTS (SELECT 1 FROM engines)")
            stored = 1 if used.fetchone()[0] else wire.PROTOCOL_VERSION
            self._reader.execute("INSERT INTO meta VALUES ('protocol', ?)", (str(stored),))
        else:
            stored = int(row[0])
        if stored != wire.PROTOCOL_VERSION:
            self._reader.close()
            raise RuntimeError(f"the task store {self.path} holds messages of mpihub's wire protocol {stored}; this "
                               f"mpihub speaks {wire.PROTOCOL_VERSION}. Restore it with the mpihub that wrote it, "
                               "or give this controller another --db file")

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    # -- events from the Hub (the loop thread: enqueue only) ----------------------------

    def _put(self, event: tuple) -> None:
        self._enqueued += 1
        self._events.put(event)

    def submitted(self, record: TaskRecord, request: Any, nbytes: int, request_of: str | None) -> None:
        self._put(("submit", (record.msg_id, record.queue, record.engine_id, record.client,
                                     record.submitted, request_of), request, nbytes))

    def assigned(self, msg_id: str, engine_id: int) -> None:
        self._put(("assign", (engine_id, msg_id), None, 0))

    def finished(self, record: TaskRecord, reply: Any, nbytes: int, fetched: bool) -> None:
        values = (record.engine_id, record.started, record.completed, record.received, record.status,
                  record.stdout, record.stderr, record.ename, int(fetched))
        self._put(("finish", values + (record.msg_id,), reply, nbytes))

    def fetched(self, msg_id: str) -> None:
        self._put(("fetched", (msg_id,), None, 0))

    def resubmitted(self, msg_id: str, new_id: str) -> None:
        self._put(("resubmitted", (new_id, msg_id), None, 0))

    def purged(self, msg_ids: Iterable[str]) -> None:
        for msg_id in msg_ids:
            self._put(("purge", (msg_id,), None, 0))

    def engine_joined(self, record: EngineRecord, next_id: int) -> None:
        self._put(("engine", (record.id, record.uuid, msgpack.packb(record.info), record.registered), None, 0))
        self._put(("meta", ("next_engine_id", str(next_id)), None, 0))

    def engine_left(self, engine_id: int) -> None:
        self._put(("engine_left", (engine_id,), None, 0))

    def set_meta(self, name: str, value: str) -> None:
        self._put(("meta", (name, value), None, 0))

    # -- the writer thread ----------------------------------------------------------------

    _STATEMENTS = {
        "submit": "INSERT OR REPLACE INTO tasks (msg_id, queue, engine_id, client, submitted, request_of, status, "
                  "request, request_bytes, signed_by) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        "assign": "UPDATE tasks SET engine_id = ? WHERE msg_id = ?",
        "finish": "UPDATE tasks SET engine_id = ?, started = ?, completed = ?, received = ?, status = ?, stdout = ?, "
                  "stderr = ?, ename = ?, fetched = ?, reply = ?, reply_bytes = ?, signed_by = ? WHERE msg_id = ?",
        "fetched": "UPDATE tasks SET fetched = 1 WHERE msg_id = ?",
        "resubmitted": "UPDATE tasks SET resubmitted = ? WHERE msg_id = ?",
        "purge": "DELETE FROM tasks WHERE msg_id = ?",
        "engine": "INSERT OR REPLACE INTO engines VALUES (?, ?, ?, ?)",
        "engine_left": "DELETE FROM engines WHERE id = ?",
        "meta": "INSERT OR REPLACE INTO meta VALUES (?, ?)",
    }

    def _write_loop(self) -> None:
        db = self._open()
        try:
            while True:
                batch = [self._events.get()]
                if batch[0][0] not in ("flush", "close"):
                    time.sleep(GROUP_COMMIT)  # let a burst gather: one transaction, few GIL switches
                while len(batch) < 10_000:
                    try:
                        batch.append(self._events.get_nowait())
                    except queue.Empty:
                        break
                if not self._write(db, batch):
                    return
        except BaseException as exc:  # noqa: BLE001 - reported to every later caller
            self._failed = exc
            log.exception("the task store %s failed; tasks go on, but are no longer stored", self.path)
            while True:  # release flushes waiting on us
                kind, event, *_ = self._events.get()
                if kind in ("flush", "close"):
                    event.set()
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, batch: list) -> bool:
        """Apply one batch in one transaction; False once told to close."""
        db.execute("BEGIN")
        waiting, running = [], True
        for kind, values, payload, nbytes in batch:
            if kind in ("flush", "close"):
                waiting.append(values)
                running = running and kind == "flush"
                continue
            if kind == "submit":
                values += self._blob(payload, nbytes, values[0], "request") + (self.key_id,)
            elif kind == "finish":
                values = values[:-1] + self._blob(payload, nbytes, values[-1], "reply") + (self.key_id,) + values[-1:]
            elif kind == "purge":
                row = db.execute("SELECT request_bytes + reply_bytes, evicted FROM tasks WHERE msg_id = ?",
                                 values).fetchone()
                if row and not row[1]:
                    self.nbytes -= row[0]
            db.execute(self._STATEMENTS[kind], values)
        if self.nbytes > self.byte_limit:
            self._evict(db)
        db.execute("COMMIT")
        self._committed += len(batch) - len(waiting)
        for event in waiting:
            event.set()
        return running

    def _blob(self, payload: Any, nbytes: int, msg_id: str, what: str) -> tuple:
        if payload is None:
            return None, 0
        if nbytes > self.payload_limit:
            log.info("task %s: its %s of %.1f MB is above the store's limit per payload (%.1f MB); "
                     "its record is kept, not its bytes", msg_id, what, nbytes / 1e6, self.payload_limit / 1e6)
            return None, 0
        blob = pack_frames(payload)
        self.nbytes += len(blob)
        return blob, len(blob)

    def _evict(self, db: sqlite3.Connection) -> None:
        """Drop the payloads of finished tasks, fetched and oldest first, down to 90% of
        the limit; the records stay, marked evicted."""
        target = self.byte_limit * 0.9
        rows = db.execute("SELECT msg_id, request_bytes + reply_bytes, fetched FROM tasks "
                          "WHERE completed IS NOT NULL AND evicted = 0 ORDER BY fetched DESC, completed")
        chosen, unfetched = [], 0
        for msg_id, nbytes, fetched in rows:
            if self.nbytes <= target:
                break
            chosen.append((msg_id,))
            self.nbytes -= nbytes
            unfetched += not fetched
        db.executemany("UPDATE tasks SET evicted = 1, request = NULL, reply = NULL WHERE msg_id = ?", chosen)
        if unfetched:
            log.warning("the task store evicted %d results nobody had fetched, to stay within %.1f MB "
                        "(MPIHUB_DB_BYTES); get_result on them says so", unfetched, self.byte_limit / 1e6)

    # -- reads (the loop thread) ----------------------------------------------------------

    def flush(self) -> None:
        """Return once every event enqueued so far is committed: at once when the writer
        has caught up."""
        if self._failed is not None:
            raise RuntimeError(f"the task store {self.path} failed: {self._failed!r}")
        if self._committed >= self._enqueued:
            return
        done = threading.Event()
        self._events.put(("flush", done, None, 0))
        done.wait()

    def finished_records(self, query: dict) -> Iterator[StoredRecord]:
        """Finished tasks' records that may match ``query``, in submission order."""
        self.flush()
        where, params = sql_prefilter(query)
        columns = ", ".join(TASK_FIELDS)
        for row in self._reader.execute(f"SELECT {columns} FROM tasks WHERE completed IS NOT NULL AND {where} "
                                        "ORDER BY submitted", params):
            yield StoredRecord(*row)

    def finished_ids(self, msg_ids: Iterable[str] | None, engine_ids: Iterable[int] | None) -> list[str]:
        """Finished tasks among ``msg_ids`` or run by ``engine_ids`` (both None: all)."""
        self.flush()
        select = "SELECT msg_id FROM tasks WHERE completed IS NOT NULL"
        if msg_ids is None and engine_ids is None:
            return [m for (m,) in self._reader.execute(select)]
        found = []
        for column, values in (("msg_id", list(msg_ids or ())), ("engine_id", list(engine_ids or ()))):
            for start in range(0, len(values), 500):
                chunk = values[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                found += [m for (m,) in self._reader.execute(f"{select} AND {column} IN ({marks})", chunk)]
        return found

    def payload(self, msg_id: str, what: str) -> tuple[str, list[bytes] | None]:
        """``(state, frames)`` of a task's "request" or "reply": state is "stored",
        "unknown", "pending", "evicted" (dropped for the size limit) or "unstored"
        (above the limit per payload, or never kept)."""
        self.flush()
        row = self._reader.execute(f"SELECT completed, evicted, {what}, request_of, signed_by FROM tasks "
                                   "WHERE msg_id = ?", (msg_id,)).fetchone()
        if row is None:
            return "unknown", None
        completed, evicted, blob, request_of, signed_by = row
        if what == "reply" and completed is None:
            return "pending", None
        if evicted:
            return "evicted", None
        if blob is None and what == "request" and request_of:
            return self.payload(request_of, what)
        if blob is None:
            return "unstored", None
        return "stored", self._signed_now(unpack_frames(blob), signed_by)

    def _signed_now(self, frames: list[bytes], signed_by: str | None) -> list[bytes]:
        """Frames as this controller signs them (an earlier one may have had another key)."""
        if signed_by in (None, self.key_id):
            return frames
        if signed_by not in self._old_signers:
            self._old_signers[signed_by] = wire.Signer(self.meta(f"key:{signed_by}") or "")
        msg = wire.unpack(self._old_signers[signed_by], frames)
        header = {k: v for k, v in msg.header.items() if k not in ("v", "nb")}
        return wire.pack(self.signer, header, msg.content, msg.buffers)

    def meta(self, name: str) -> str | None:
        self.flush()
        row = self._reader.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def outcome(self, msg_id: str) -> tuple[str, int | None] | None:
        """``(status, engine_id)`` of a finished task, None if it is unknown or pending
        (a pending task is always in memory)."""
        self.flush()
        row = self._reader.execute("SELECT status, engine_id FROM tasks WHERE msg_id = ? AND completed IS NOT NULL",
                                   (msg_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def pending_tasks(self) -> Iterator[PendingTask]:
        """Tasks not finished, in submission order, with their requests signed by this
        controller (None where the store did not keep one)."""
        self.flush()
        rows = self._reader.execute("SELECT msg_id, queue, engine_id, client, submitted, request, request_of, "
                                    "signed_by, evicted FROM tasks WHERE completed IS NULL ORDER BY submitted")
        blobs: dict[str, tuple] = {}
        for msg_id, queue, engine_id, client, submitted, blob, request_of, signed_by, evicted in rows.fetchall():
            if blob is not None and not evicted:
                blobs[msg_id] = (blob, signed_by)
                frames = self._signed_now(unpack_frames(blob), signed_by)
            elif request_of in blobs:  # one request to several engines, stored once
                frames = self._signed_now(unpack_frames(blobs[request_of][0]), blobs[request_of][1])
            else:
                state, frames = self.payload(request_of, "request") if request_of else ("unstored", None)
                frames = frames if state == "stored" else None
            nbytes = sum(len(f) for f in frames) if frames else 0
            yield PendingTask(msg_id, queue, engine_id, client, submitted, frames, nbytes)

    def engines(self) -> list[StoredEngine]:
        """The engine table as its controller left it."""
        self.flush()
        rows = self._reader.execute("SELECT id, uuid, info, registered FROM engines ORDER BY id")
        return [StoredEngine(engine_id, bytes(uuid), msgpack.unpackb(info), registered)
                for engine_id, uuid, info, registered in rows]

    def close(self) -> None:
        """Commit what is queued and stop the writer."""
        if self._writer.is_alive():
            done = threading.Event()
            self._events.put(("close", done, None, 0))
            done.wait(timeout=30)
            self._writer.join(timeout=5)
        self._reader.close()
