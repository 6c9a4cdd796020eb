"""Chaos soak: many load-balanced tasks with ``retries`` while engines are SIGKILLed and
replaced at random, under both controller layouts. Every task's result must arrive
exactly once, be right, and agree with the Hub's records.

Bounded for CI by default (100,000 tasks a layout, about 25 s each on 2 cores); longer
on request, e.g.::

    MPIHUB_SOAK_TASKS=1000000 MPIHUB_SOAK_SECONDS=1800 pytest tests/test_chaos.py -s

``MPIHUB_SOAK_TASKS`` is the least number of tasks, ``MPIHUB_SOAK_SECONDS`` the least
time to keep submitting (both must be reached), ``MPIHUB_SOAK_KILL_EVERY`` the mean
seconds between kills and ``MPIHUB_SOAK_SEED`` the seed of the kills' timing and
victims. The Hub keeps every record for the comparison, so the controller grows with
the run (about 2.5 KB a task at 100,000 tasks).
"""
from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

import mpihub
from mpihub.client.asyncresult import AsyncMapResult
from mpihub.protocol import wire
from support import RunningCluster, assert_gone

TASKS = int(os.environ.get("MPIHUB_SOAK_TASKS", "100000"))
SECONDS = float(os.environ.get("MPIHUB_SOAK_SECONDS", "0"))
KILL_EVERY = float(os.environ.get("MPIHUB_SOAK_KILL_EVERY", "1.5"))
SEED = int(os.environ.get("MPIHUB_SOAK_SEED", str(random.randrange(1 << 32))))
ENGINES = 4
RETRIES = 5
BATCH = 2000  # tasks per map_async call
IN_FLIGHT = 3  # batches outstanding at once, so engines never run dry between batches
BATCH_TIMEOUT = 120  # seconds the oldest batch may take once it is the one waited for
HEARTBEAT_TIMEOUT = 1.0  # a killed engine is noticed (and its tasks retried) within this

# What the controller logs (INFO/WARNING, into its log file) when it retries a task and
# when it gives up on an engine; the only place retries are recorded.
RETRY_LINE = re.compile(r": task (\S+) (.*) on engine (\d+); retrying")
DEAD_LINE = re.compile(r"engine (\d+) stopped sending heartbeats")

# Setup and teardown, one batch timing out, and the load at no less than 1,000 tasks/s.
pytestmark = pytest.mark.timeout(120 + BATCH_TIMEOUT + 1.5 * SECONDS + TASKS / 1000)


@mpihub.interactive
def square(i):
    """The task: cheap, checkable, and names the process that ran it."""
    import os

    return i * i, os.getpid()


class ReplyCounter:
    """Sits in front of the client's message dispatch and counts every task reply per
    msg_id: the client itself keeps only the first reply for a msg_id and drops any
    other silently, so a duplicate is visible only here. Also remembers the pid of every
    engine that ever registered, to check which process ran each task."""

    def __init__(self, rc: mpihub.Client):
        self.replies: Counter[str] = Counter()
        self.engine_pids = {e.id: e.pid for e in rc.engines.values()}
        self._dispatch = rc.core.on_message
        rc.core.on_message = rc.core.io.on_message = self  # the IO thread's and blocking calls' way in

    def __call__(self, msg: wire.Message) -> None:
        header = msg.header
        if header["t"] == "reply":
            self.replies[header.get("id")] += 1
        elif header["t"] == "notify" and header.get("ev") == "registered":
            self.engine_pids[header["engine"]["id"]] = header["engine"]["pid"]
        self._dispatch(msg)


class Chaos(threading.Thread):
    """Every ~``mean`` seconds SIGKILLs a random registered engine (only processes this
    cluster's launcher started) and starts engines until ``engines`` run again (more
    than one if an engine also left by itself). A kill needs two registered engines, so
    one always stays up to take the work."""

    def __init__(self, running: RunningCluster, engines: int, mean: float, seed: int):
        super().__init__(name="chaos", daemon=True)
        self.cluster = running.cluster
        self.client = running.client
        self.engines = engines
        self.mean = mean
        self.random = random.Random(seed)
        self.killed: set[int] = set()  # engine ids
        self.restarts = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        assert not self.is_alive(), "the chaos thread did not stop"

    def run(self) -> None:
        try:
            while not self._halt.wait(self.random.uniform(0.5, 1.5) * self.mean):
                self._kill_one()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _kill_one(self) -> None:
        ours = {p.pid: p for p in self.cluster.launcher.processes
                if p is not self.cluster._controller_process and p.poll() is None}
        registered = [e for e in self.client.engines.values() if e.pid in ours]
        if len(registered) >= 2:
            victim = self.random.choice(registered)
            process = ours.pop(victim.pid)
            process.kill()
            process.wait(10)
            self.killed.add(victim.id)
        for _ in range(self.engines - len(ours)):
            self.cluster.start_engines(1)
            self.restarts += 1


@dataclass
class Tally:
    """What the client saw of the tasks it submitted."""

    engine_of: dict[str, int] = field(default_factory=dict, repr=False)  # msg_id -> engine its metadata names
    pid_of: dict[str, int] = field(default_factory=dict, repr=False)  # msg_id -> process that ran it
    failed: list[str] = field(default_factory=list)  # answered with an error
    missing: list[str] = field(default_factory=list)  # never answered
    wrong: list[tuple] = field(default_factory=list)  # (msg_id, input, result) of wrong values

    @property
    def lost(self) -> int:
        return len(self.failed) + len(self.missing)

    def elsewhere(self, engine_pids: dict[int, int]) -> list[tuple[str, int, int | None]]:
        """(msg_id, pid, engine's pid) of the results that did not come from the engine
        their metadata names. Asked at the end: with a split controller an engine's
        registration notice and its first replies take different connections, so a
        reply may overtake the notice that gives its engine's pid."""
        return [(m, pid, engine_pids.get(self.engine_of[m])) for m, pid in self.pid_of.items()
                if engine_pids.get(self.engine_of[m]) != pid]


def check_batch(ar: AsyncMapResult, first: int, tally: Tally, timeout: float) -> None:
    """Record one batch of ``square`` over ``first, first+1, ...``, waiting up to
    ``timeout`` seconds for it to finish."""
    ar.wait(timeout)
    for md in ar.metadata:
        if md.status == "pending":
            tally.missing.append(md.msg_id)
        elif md.error is not None:
            tally.failed.append(md.msg_id)
        else:
            tally.engine_of[md.msg_id] = md.engine_id
    if ar.ready() and ar.successful():
        for i, (msg_id, (value, pid)) in enumerate(zip(ar.msg_ids, ar.get(0)), first):
            tally.pid_of[msg_id] = pid
            if value != i * i:
                tally.wrong.append((msg_id, i, value))


def run_load(lbview, chaos: Chaos) -> tuple[list[str], Tally]:
    """Submit batches until TASKS tasks and SECONDS seconds are both reached, keeping
    IN_FLIGHT batches outstanding; stops the chaos before the last batches drain (so no
    kill lands on an idle cluster). Once a batch times out, nothing more is submitted or
    waited for: the run fails then, and quickly. Returns every msg_id submitted and the
    tally."""
    ids: list[str] = []
    tally = Tally()
    outstanding: deque[tuple[AsyncMapResult, int]] = deque()
    started = time.monotonic()
    while (len(ids) < TASKS or time.monotonic() - started < SECONDS) and not tally.missing:
        if len(outstanding) == IN_FLIGHT:
            check_batch(*outstanding.popleft(), tally, BATCH_TIMEOUT)
        ar = lbview.map_async(square, range(len(ids), len(ids) + BATCH), chunksize=1)
        outstanding.append((ar, len(ids)))
        ids += ar.msg_ids
    chaos.stop()
    while outstanding:
        check_batch(*outstanding.popleft(), tally, 0 if tally.missing else BATCH_TIMEOUT)
    return ids, tally


def hub_records(rc: mpihub.Client) -> dict[str, dict]:
    """Every load-balanced task record the Hub has, by msg_id, fetched in ten parts (by
    the msg_id's last digit) so no one answer is huge."""
    records = {}
    for digit in "0123456789":
        for record in rc.db_query({"queue": "task", "msg_id": {"$glob": f"*{digit}"}},
                                  keys=["engine_id", "status", "completed"]):
            records[record["msg_id"]] = record
    return records


@dataclass
class ControllerLog:
    """What the controller's log file says of retries and dead engines (the only place
    retries are recorded)."""

    text: str = field(repr=False)
    retries: Counter[str] = field(default_factory=Counter)  # msg_id -> times retried
    retried_on: set[int] = field(default_factory=set)  # engines whose tasks were retried
    dead: set[int] = field(default_factory=set)  # engines declared dead

    @classmethod
    def read(cls, running: RunningCluster) -> "ControllerLog":
        parsed = cls(Path(running.cluster._controller_process.log_path).read_text())
        for msg_id, _why, engine_id in RETRY_LINE.findall(parsed.text):
            parsed.retries[msg_id] += 1
            parsed.retried_on.add(int(engine_id))
        parsed.dead = {int(e) for e in DEAD_LINE.findall(parsed.text)}
        return parsed

    def about(self, engine_ids: set[int]) -> list[str]:
        """The log lines that name one of ``engine_ids``, for a failure message."""
        wanted = re.compile(rf"engine ({'|'.join(map(str, engine_ids))})\b")
        return [line for line in self.text.splitlines() if wanted.search(line)]


@pytest.fixture(params=[[], ["--split"]], ids=["one-process", "split"])
def soak_cluster(request, monkeypatch) -> Iterator[RunningCluster]:
    """A controller (one process, or a split one: Hub, direct path and task path) and
    ENGINES engines that notice a killed engine within about a second and keep every
    finished record for the comparison; at the end every process it ever started,
    replacements included, must be gone."""
    monkeypatch.setenv("MPIHUB_HEARTBEAT_PERIOD", "0.2")
    monkeypatch.setenv("MPIHUB_HEARTBEAT_TIMEOUT", str(HEARTBEAT_TIMEOUT))
    monkeypatch.setenv("MPIHUB_MAX_RECORDS", str(10 ** 9))
    running = RunningCluster(ENGINES, controller_args=request.param, fork_engines=False)  # killed one by one
    try:
        yield running
    finally:
        running.stop()
        assert_gone(running.cluster.launcher.pids)


def test_soak_with_engines_killed_at_random(soak_cluster: RunningCluster, capsys):
    """The promise of ``retries`` under sustained failure: with engines dying at random
    while tasks stream in, no task is lost or answered twice, each result is right and
    came from the engine its metadata names, and the Hub's records say the same."""
    running = soak_cluster
    rc = running.client
    counter = ReplyCounter(rc)
    chaos = Chaos(running, ENGINES, KILL_EVERY, SEED)
    lbview = rc.load_balanced_view().set_flags(retries=RETRIES)
    started = time.monotonic()
    chaos.start()
    try:
        ids, tally = run_load(lbview, chaos)
    finally:
        chaos.stop()
    elapsed = time.monotonic() - started
    time.sleep(3 * HEARTBEAT_TIMEOUT)  # room for a late death to (wrongly) answer a task twice
    records = hub_records(rc)  # answered after every reply the controller sent before it
    status = rc.queue_status()
    log = ControllerLog.read(running)

    duplicated = sum(n - 1 for n in counter.replies.values() if n > 1)
    strangers = set(counter.replies) - set(ids)
    disagree = [m for m in ids if m not in records or records[m]["status"] != "ok"
                or records[m]["completed"] is None or records[m]["engine_id"] != tally.engine_of.get(m)]
    elsewhere = tally.elsewhere(counter.engine_pids)
    unnoticed, false_deaths = chaos.killed - log.dead, log.dead - chaos.killed
    layout = "split" if "--split" in running.cluster.controller_args else "one-process"
    summary = (f"soak ({layout}): tasks={len(ids)} kills={len(chaos.killed)} restarts={chaos.restarts} "
               f"retries={sum(log.retries.values())} retried_tasks={len(log.retries)} lost={tally.lost} "
               f"duplicated={duplicated} wrong={len(tally.wrong) + len(elsewhere)} disagree={len(disagree)} "
               f"false_deaths={len(false_deaths)} engines_used={len(set(tally.engine_of.values()))} "
               f"elapsed={elapsed:.1f}s seed={SEED}")
    with capsys.disabled():
        print(f"\n{summary}")

    assert chaos.error is None, f"{summary}; the chaos thread failed: {chaos.error!r}"
    assert chaos.killed, f"{summary}; no engine was killed: the soak tested nothing"
    assert tally.lost == 0, f"{summary}; failed {tally.failed[:5]}, never answered {tally.missing[:5]}"
    assert duplicated == 0 and not strangers, (
        f"{summary}; answered more than once: {[m for m, n in counter.replies.items() if n > 1][:5]}, "
        f"replies for unknown ids: {sorted(strangers)[:5]}")
    assert not tally.wrong, f"{summary}; wrong results (msg_id, i, result): {tally.wrong[:5]}"
    assert not elsewhere, f"{summary}; not run by the engine named (msg_id, pid, its pid): {elsewhere[:5]}"
    assert not disagree, f"{summary}; Hub records disagree: {[(m, records.get(m)) for m in disagree[:5]]}"
    assert len(records) == len(ids), f"{summary}; the Hub has {len(records)} task records"
    assert log.retries and set(log.retries) <= set(ids), f"{summary}; kills of busy engines caused no retries"
    assert not unnoticed, f"{summary}; kills the controller never noticed: {log.about(unnoticed)}"
    assert log.retried_on <= log.dead, f"{summary}; retries on live engines: {log.about(log.retried_on - log.dead)}"
    assert status["unassigned"] == 0 and all(
        s["queue"] == s["tasks"] == 0 for e, s in status.items() if e != "unassigned"), f"{summary}; {status}"
