"""Restarts and network loss end to end, with real processes and real TCP cuts.

- A controller killed with SIGKILL and started again with ``--restore`` binds its old
  ports with its old keys: its engines register again under their ids, it still has
  the results finished before, the tasks it had not finished complete, and the client
  that was waiting gets every result once, as does a new client; a task the store never
  got fails, saying it was lost.
- An engine cut off from the controller for longer than the heartbeat timeout is
  declared dead (its tasks retried elsewhere or failed), and once the line is back it
  registers again under its id, in the same process, and works.
- A client cut off while its tasks finish gets every result once the line is back.
- A reply that vanished on the way to a controller that then died is sent again by the
  engine, which keeps its last replies; one it could not keep fails, saying so.

The cuts go through :class:`support.Relay`, a TCP relay that drops every connection
and refuses new ones for as long as the cut lasts (or swallows what one side sends).
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

import mpihub
from mpihub.controller.taskdb import db_path
from mpihub.protocol import curve

from support import LAYOUTS, Relay, assert_gone, children_of

pytestmark = pytest.mark.timeout(120)

HEARTBEAT_TIMEOUT = float(os.environ["MPIHUB_HEARTBEAT_TIMEOUT"])  # conftest.py sets it (3 s)


@mpihub.interactive
def nap(i, seconds=0.4, runs=None):
    """Sleep, note the run in ``runs`` (a folder) and return ``(i, pid)``."""
    import os
    import time
    import uuid

    time.sleep(seconds)
    if runs:
        open(os.path.join(runs, f"{i}-{uuid.uuid4().hex}"), "w").close()
    return i, os.getpid()


@mpihub.interactive
def ones(n):
    """An array large enough to travel in zero-copy frames (not kept by the engine)."""
    import numpy

    return numpy.ones(n)


@mpihub.interactive
def pid():
    import os

    return os.getpid()


class Processes:
    """A controller and engines started here, by subprocess; all are killed at the end."""

    def __init__(self, profile: Path, cluster_id: str):
        self.profile = profile
        self.cluster_id = cluster_id
        self.env = {**os.environ, "MPIHUB_DIR": str(profile)}
        self.started: list[subprocess.Popen] = []
        self.logs: list[str] = []  # of the processes stopped, in order
        self.controller: subprocess.Popen | None = None

    def file(self, role: str) -> Path:
        return self.profile / "security" / f"mpihub-{role}-{self.cluster_id}.json"

    def start_controller(self, *args: str) -> subprocess.Popen:
        self.file("client").unlink(missing_ok=True)
        self.controller = self._start("controller", "--cluster-id", self.cluster_id, *args)
        deadline = time.monotonic() + 30
        while not self.file("client").exists():
            assert self.controller.poll() is None, "the controller exited"
            assert time.monotonic() < deadline, "no connection file within 30 s"
            time.sleep(0.05)
        return self.controller

    def kill_controller(self) -> None:
        """SIGKILL the controller (a split one's Hub: its paths must then end by themselves)."""
        paths = children_of(self.controller.pid)
        self.controller.send_signal(signal.SIGKILL)
        self.controller.wait(10)
        assert_gone(paths)

    def start_engine(self, relay_to: dict[str, Relay] | None = None) -> subprocess.Popen:
        """An engine; with ``relay_to``, its connections to the controller's engine and
        heartbeat ports go through those relays."""
        url_file = self.file("engine")
        if relay_to:
            info = json.loads(url_file.read_text())
            for channel, relay in relay_to.items():
                info[channel] = relay.url
                info["candidates"][channel] = [relay.url]
            url_file = self.profile / f"relayed-engine-{len(self.started)}.json"
            url_file.write_text(json.dumps(info))
        return self._start("engine", "--url-file", str(url_file))

    def _start(self, *args: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "mpihub", *args], env=self.env, stderr=subprocess.PIPE,
                                   text=True)
        self.started.append(process)
        return process

    def stop(self) -> list[str]:
        """Stop everything (once); returns what each process wrote to stderr."""
        for process in self.started[len(self.logs):]:
            if process.poll() is None:
                process.terminate()
        for process in self.started[len(self.logs):]:
            try:
                self.logs.append(process.communicate(timeout=10)[1])
            except subprocess.TimeoutExpired:
                process.kill()
                self.logs.append(process.communicate(timeout=5)[1])
        assert_gone([p.pid for p in self.started])
        return self.logs


@pytest.fixture
def processes(tmp_path):
    running = Processes(tmp_path, "restart")
    try:
        yield running
    finally:
        for process, log in zip(running.started, running.stop()):
            print(f"--- {' '.join(process.args[2:5])} (pid {process.pid}, exit {process.returncode})\n{log[-3000:]}")


def client_through(processes: Processes, relay: Relay | None = None) -> mpihub.Client:
    info = json.loads(processes.file("client").read_text())
    if relay is not None:
        info["client"] = relay.url
        info["candidates"] = {"client": [relay.url]}
    return mpihub.Client(info, timeout=20)


def runs_of(folder: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for entry in folder.iterdir():
        counts[int(entry.name.split("-")[0])] = counts.get(int(entry.name.split("-")[0]), 0) + 1
    return counts


@pytest.mark.parametrize("options", [[], ["--curve"], ["--split"]], ids=["one-process", "curve", "split"])
def test_a_restored_controller_takes_back_engines_results_and_tasks(processes, tmp_path, options):
    if "--curve" in options and not curve.available():
        pytest.skip("this libzmq has no CURVE")
    runs = tmp_path / "runs"
    runs.mkdir()
    processes.start_controller("--db", "sqlite", *options)
    engines = [processes.start_engine() for _ in range(2)]
    rc = client_through(processes)
    try:
        rc.wait_for_engines(2, timeout=30, interactive=False)
        pids = dict(zip(rc.ids, rc[:].apply_sync(pid)))
        assert sorted(pids.values()) == sorted(e.pid for e in engines)
        lb = rc.load_balanced_view()
        before = lb.apply_async(nap, -1, 0)
        assert before.get(10) == (-1, before.get()[1])
        awaited = [lb.apply_async(nap, i, 0.4, str(runs)) for i in range(10)]
        with lb.temp_flags(after=before):  # queued behind the others; what it waits for ended before the crash
            dependent = lb.apply_async(nap, 200, 0, str(runs))
        direct = rc[0].apply_async(nap, 100, 0.4, str(runs))
        lost = lb.apply_async(nap, 300, 0, str(runs))
        time.sleep(0.6)  # some done, some running, some queued in the controller
        processes.kill_controller()
        part = "task" if "--split" in options else ""
        with sqlite3.connect(db_path(processes.profile, processes.cluster_id, part)) as store:
            # as if its request had come in the last milliseconds, not yet committed
            store.execute("DELETE FROM tasks WHERE msg_id = ?", (lost.msg_ids[0],))
        time.sleep(1.0)  # a second with no controller at all
        processes.start_controller("--db", "sqlite", "--restore", *(o for o in options if o == "--split"))

        results = [ar.get(30) for ar in awaited]
        assert [i for i, _ in results] == list(range(10))
        assert {p for _, p in results} <= set(pids.values())
        assert direct.get(30) == (100, pids[0])
        assert dependent.get(30)[0] == 200
        with pytest.raises(mpihub.ControllerError, match="lost"):
            lost.get(30)
        assert runs_of(runs) == {i: 1 for i in [*range(10), 100, 200]}, "a task ran twice, or never"

        assert rc.ids == [0, 1]
        assert dict(zip(rc.ids, rc[:].apply_sync(pid))) == pids  # the same processes, under the same ids
        assert lb.map_sync(lambda x: x * 2, range(6)) == [0, 2, 4, 6, 8, 10]
        assert rc.queue_status()["unassigned"] == 0
        with client_through(processes) as later:
            assert later.ids == [0, 1]
            assert later.get_result(before.msg_ids[0]).get(10) == before.get()
            records = later.db_query({"msg_id": {"$in": [ar.msg_ids[0] for ar in awaited]}}, keys=["status"])
            assert sorted(r["status"] for r in records) == ["ok"] * 10
    finally:
        rc.close()
    logs = processes.stop()
    engine_logs = "".join(logs[1:3])
    assert engine_logs.count("is registered again") == 2


class RelayedEngine:
    """A controller (``--db sqlite``), a client, and one engine whose task connection
    goes through a relay, so that its replies can vanish on the way."""

    def __init__(self, processes: Processes, runs: Path):
        self.processes = processes
        self.runs = runs
        processes.start_controller("--db", "sqlite")
        self.relay = Relay(json.loads(processes.file("engine").read_text())["engine"])
        self.engine = processes.start_engine({"engine": self.relay})
        self.rc = client_through(processes)
        self.rc.wait_for_engines(1, timeout=30, interactive=False)
        self.view = self.rc[self.rc.ids[0]]

    def lose_replies_in_a_restart(self, ran: Callable[[dict[int, int]], bool], meanwhile=lambda: None) -> None:
        """Swallow what the engine sends until ``ran(runs_of(runs))``, then SIGKILL the
        controller, call ``meanwhile()`` and restore it."""
        time.sleep(0.3)
        self.relay.swallow()
        deadline = time.monotonic() + 60
        while not ran(runs_of(self.runs)):
            assert time.monotonic() < deadline, f"the engine ran only {runs_of(self.runs)}"
            time.sleep(0.05)
        time.sleep(0.5)
        self.processes.kill_controller()
        self.relay.cut()
        meanwhile()
        self.processes.start_controller("--db", "sqlite", "--restore")
        self.relay.mend()

    def close(self) -> None:
        self.rc.close()
        self.relay.close()


@pytest.fixture
def relayed(processes, tmp_path):
    (tmp_path / "runs").mkdir()
    setup = RelayedEngine(processes, tmp_path / "runs")
    try:
        yield setup
    finally:
        setup.close()


def test_a_reply_lost_in_a_restart_is_sent_again(relayed, processes):
    runs, view = str(relayed.runs), relayed.view
    kept = view.apply_async(nap, 1, 0.8, runs)
    not_kept = view.apply_async(ones, 100_000)  # 800 kB: zero-copy frames
    unsent = relayed.rc.load_balanced_view().apply_async(nap, 5, 0, runs)

    def forget_the_dispatch() -> None:  # as if it had come in the store's last milliseconds
        assert not kept.ready() and not not_kept.ready() and not unsent.ready()
        with sqlite3.connect(db_path(processes.profile, processes.cluster_id, "")) as store:
            store.execute("UPDATE tasks SET engine_id = NULL WHERE msg_id = ?", (unsent.msg_ids[0],))

    relayed.lose_replies_in_a_restart(lambda done: 5 in done, forget_the_dispatch)
    pid_of_engine = relayed.engine.pid
    assert kept.get(30) == (1, pid_of_engine)
    with pytest.raises(mpihub.EngineError, match="reply was lost"):
        not_kept.get(30)
    assert unsent.get(30) == (5, pid_of_engine)
    assert view.apply_sync(pid) == pid_of_engine  # after anything the engine may have been sent again
    assert runs_of(relayed.runs) == {1: 1, 5: 1}, "a task whose reply was kept ran again"
    relayed.close()
    logs = "".join(processes.stop())
    assert ("engine 0 is back: 0 of its tasks queued there, 0 sent again, 2 replies asked again, 1 replies lost, "
            "0 no longer its own, 1 taken back from the queue") in logs
    assert "sent 2 replies again" in logs


def test_a_long_queue_of_direct_tasks_run_while_the_controller_was_gone_runs_once(relayed, processes):
    """More replies lost than an engine's floor of 1,000 ids: it remembers every id it
    answered since shortly before it last heard the controller, and kept each reply."""
    runs, view = str(relayed.runs), relayed.view
    first = view.apply_async(nap, 0, 1.0, runs)
    queued = [view.apply_async(nap, i, 0, runs) for i in range(1, 2501)]
    relayed.lose_replies_in_a_restart(lambda done: len(done) == 2501)
    assert [ar.get(60)[0] for ar in [first, *queued]] == list(range(2501))
    assert view.apply_sync(pid) == relayed.engine.pid
    assert runs_of(relayed.runs) == {i: 1 for i in range(2501)}, "a task ran twice"
    relayed.close()
    assert "0 sent again, 2501 replies asked again, 0 replies lost" in "".join(processes.stop())


def test_engines_behind_a_keepers_relay_come_back_to_a_restored_controller(processes, tmp_path):
    """Killed and restored at the same address: the keeper's relay reconnects, its
    engines register again through it under their ids, and a task that ran meanwhile
    is answered once."""
    runs = tmp_path / "runs"
    runs.mkdir()
    processes.start_controller("--db", "sqlite")
    processes._start("engine", "--fork", "2", "--relay", "--url-file", str(processes.file("engine")))
    rc = client_through(processes)
    try:
        rc.wait_for_engines(2, timeout=30, interactive=False)
        pids = dict(zip(rc.ids, rc[:].apply_sync(pid)))
        running = rc[1].apply_async(nap, 7, 1.0, str(runs))
        time.sleep(0.3)
        processes.kill_controller()
        processes.start_controller("--db", "sqlite", "--restore")
        assert running.get(30) == (7, pids[1])
        assert dict(zip(rc.ids, rc[:].apply_sync(pid))) == pids
        assert runs_of(runs) == {7: 1}
    finally:
        rc.close()
    logs = processes.stop()
    assert logs[1].count("through this node's relay") >= 2 and logs[1].count("is registered again") == 2


def test_restore_says_why_it_cannot(processes, tmp_path):
    def controller(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mpihub", "controller", "--cluster-id", "restart", *args],
                              env=processes.env, capture_output=True, text=True, timeout=30)

    assert "nothing to restore" in controller("--db", "sqlite", "--restore").stderr
    assert "needs --db sqlite" in controller("--restore").stderr
    assert "nothing to restore" in controller("--db", "sqlite", "--split", "--restore").stderr
    processes.start_controller("--db", "sqlite")
    taken = controller("--db", "sqlite", "--restore")
    assert taken.returncode == 2 and "still running?" in taken.stderr
    with client_through(processes) as rc:  # the first one is unharmed
        assert rc.ids == []


@pytest.mark.layouts("one", "split")
def test_engines_follow_a_controller_restored_at_another_address(processes, layout):
    """The controller's node is lost; a new controller restores it on another node, at
    another address (here 127.0.0.2) with the same key and ports, and rewrites the
    connection file. The engines, their controller silent, read the file, point their
    sockets at the new address and register again under their ids."""
    processes.start_controller("--db", "sqlite", *LAYOUTS[layout])
    engines = [processes.start_engine() for _ in range(2)]
    rc = client_through(processes)
    rc.wait_for_engines(2, timeout=30, interactive=False)
    pids = {e: rc[e].apply_sync(pid) for e in rc.ids}
    done = rc[:].apply_async(nap, 7, 0.1)
    assert [i for i, _ in done.get(10)] == [7, 7]
    rc.close()
    processes.kill_controller()
    processes.start_controller("--db", "sqlite", "--restore", "--ip", "127.0.0.2", *LAYOUTS[layout])
    assert json.loads(processes.file("engine").read_text())["engine"].startswith("tcp://127.0.0.2:")
    with client_through(processes) as rc:
        rc.wait_for_engines(2, timeout=HEARTBEAT_TIMEOUT + 20, interactive=False)
        assert {e: rc[e].apply_sync(pid) for e in rc.ids} == pids  # the same processes, under their ids
        assert [i for i, _ in rc.get_result(done.msg_ids).get(10)] == [7, 7]
        assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(6)) == list(range(1, 7))
    assert all(engine.poll() is None for engine in engines)
    logs = processes.stop()
    assert "the controller moved" in "".join(logs)


@pytest.mark.layouts("one", "split")
def test_an_engine_cut_off_comes_back_under_its_id(processes, tmp_path, layout):
    runs = tmp_path / "runs"
    runs.mkdir()
    processes.start_controller(*LAYOUTS[layout])
    info = json.loads(processes.file("engine").read_text())
    relays = {channel: Relay(info[channel]) for channel in ("engine", "heartbeat")}
    rc = None
    try:
        steady = processes.start_engine()
        rc = client_through(processes)
        rc.wait_for_engines(1, timeout=30, interactive=False)
        cut_off = processes.start_engine(relays)
        rc.wait_for_engines(2, timeout=30, interactive=False)
        engine_id = next(e for e in rc.ids if rc[e].apply_sync(pid) == cut_off.pid)
        lb = rc.load_balanced_view()
        lb.set_flags(retries=2)
        awaited = [lb.apply_async(nap, i, 0.3, str(runs)) for i in range(12)]
        direct = rc[engine_id].apply_async(nap, 100, HEARTBEAT_TIMEOUT + 4)  # still running when declared dead
        time.sleep(0.5)
        for relay in relays.values():
            relay.cut()
        deadline = time.monotonic() + HEARTBEAT_TIMEOUT + 10
        while engine_id in rc.ids and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine_id not in rc.ids, "the controller never declared the cut-off engine dead"
        with pytest.raises(mpihub.EngineError, match="heartbeats"):
            direct.get(10)
        for relay in relays.values():
            relay.mend()
        rc.wait_for_engines(2, timeout=20, interactive=False)
        assert engine_id in rc.ids
        assert rc[engine_id].apply_sync(pid) == cut_off.pid  # the same process, under its old id
        assert cut_off.poll() is None and steady.poll() is None
        results = [ar.get(30) for ar in awaited]
        assert [i for i, _ in results] == list(range(12))
        counts = runs_of(runs)
        assert set(counts) == set(range(12))
        assert lb.map_sync(lambda x: -x, range(8)) == [-x for x in range(8)]
        assert rc.queue_status()["unassigned"] == 0
    finally:
        if rc is not None:
            rc.close()
        for relay in relays.values():
            relay.close()
    logs = processes.stop()
    assert "registering again" in "".join(logs)


def test_a_client_cut_off_gets_every_result_when_the_line_is_back(processes):
    processes.start_controller()
    for _ in range(2):
        processes.start_engine()
    relay = Relay(json.loads(processes.file("client").read_text())["client"])
    rc = client_through(processes, relay)
    try:
        rc.wait_for_engines(2, timeout=30, interactive=False)
        lb = rc.load_balanced_view()
        finishing = [lb.apply_async(nap, i, 0.5) for i in range(4)]
        time.sleep(0.1)
        relay.cut()  # the results arrive at the controller meanwhile, and cannot be passed on
        time.sleep(1.5)
        during = lb.apply_async(nap, 10, 0)  # queued in the client while the line is down
        status: list[dict] = []
        asking = threading.Thread(target=lambda: status.append(rc.queue_status()))  # sent once the line is back
        asking.start()
        time.sleep(1.0)
        assert not any(ar.ready() for ar in finishing) and not status
        relay.mend()
        asking.join(20)
        assert status and status[0]["unassigned"] == 0
        assert [ar.get(20)[0] for ar in finishing] == [0, 1, 2, 3]
        assert during.get(20)[0] == 10
        assert rc.core.reconnector.reconnects >= 1
        assert rc.ids == [0, 1]
        assert rc[:].apply_sync(lambda: "still here") == ["still here"] * 2
    finally:
        rc.close()
        relay.close()


@mpihub.interactive
def square(i):
    return i * i


RESTARTS = 3
LOAD_TASKS = int(os.environ.get("MPIHUB_RESTART_TASKS", "20000"))


def test_restarts_under_load_lose_nothing(processes):
    """Load-balanced tasks stream through while the controller is SIGKILLed and
    restored three times: every task's right result arrives, and nothing fails."""
    processes.start_controller("--db", "sqlite")
    for _ in range(2):
        processes.start_engine()
    rc = client_through(processes)
    try:
        rc.wait_for_engines(2, timeout=30, interactive=False)
        lb = rc.load_balanced_view()
        lb.set_flags(retries=2)
        awaited = [lb.apply_async(square, i) for i in range(LOAD_TASKS)]
        rc.queue_status()  # a round trip: every request is in the controller, and in the store soon after
        time.sleep(0.05)
        started = time.monotonic()
        for _ in range(RESTARTS):
            time.sleep(0.7)
            processes.kill_controller()
            time.sleep(0.3)
            processes.start_controller("--db", "sqlite", "--restore")
        values = [ar.get(120) for ar in awaited]
        elapsed = time.monotonic() - started
        assert values == [i * i for i in range(LOAD_TASKS)]
        status = rc.queue_status()
        assert status["unassigned"] == 0 and rc.ids == [0, 1]
        print(f"restarts under load: tasks={LOAD_TASKS} restarts={RESTARTS} lost=0 wrong=0 "
              f"reconnects={rc.core.reconnector.reconnects} elapsed={elapsed:.1f}s")
    finally:
        rc.close()


def test_queries_wait_for_the_connection_and_are_asked_again_after_it(processes):
    """A query made while the controller is down goes out once the client has said hello
    to the restored one (its answer would otherwise go to a socket not yet back); of
    the queries waiting when the connection broke, a harmless one is asked again and
    answered, another fails saying it may have been done."""
    from mpihub.client.core import QuerySlot

    processes.start_controller("--db", "sqlite")
    processes.start_engine()
    rc = client_through(processes)
    try:
        rc.wait_for_engines(1, timeout=30, interactive=False)
        harmless = QuerySlot({"t": "query", "op": "queue_status", "rid": "cut-1", "rt": rc.core.receiving_identity})
        harmful = QuerySlot({"t": "query", "op": "abort", "rid": "cut-2", "ids": [], "rt": rc.core.receiving_identity})
        rc.core.queries.update({"cut-1": harmless, "cut-2": harmful})  # as if sent just before the break
        time.sleep(0.1)  # the store commits every 5 ms: the engine table is in it
        processes.kill_controller()
        deadline = time.monotonic() + 10
        while rc.core.reconnector.up.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        answers: list[dict] = []
        asking = threading.Thread(target=lambda: answers.append(rc.queue_status()))
        asking.start()
        time.sleep(0.5)
        assert not answers  # waits: nothing to answer it
        processes.start_controller("--db", "sqlite", "--restore")
        asking.join(20)
        assert answers and answers[0][0]["queue"] == 0, answers  # engine 0, restored from the store
        assert harmless.event.wait(10) and harmless.header["ok"] and "unassigned" in harmless.header["result"]
        assert harmful.event.is_set() and harmful.lost and "may or may not" in harmful.header["error"]
    finally:
        rc.close()
