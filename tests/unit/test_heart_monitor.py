"""The heartbeat monitor's books: the period grows with the engines, each engine is held
to the timeout of the period it was told, and silence past it is death. No sockets:
the monitor's thread is never started."""
import time

import pytest
import zmq

from mpihub import config
from mpihub.controller.heartbeat import HeartMonitor
from mpihub.engine import registration
from mpihub.engine.heartbeat import silent_controller
from mpihub.protocol import wire


@pytest.fixture
def monitor():
    return HeartMonitor(zmq.Context.instance(), None, wire.Signer("k"), "inproc://unused")


def test_the_period_keeps_all_pings_under_the_rate(monkeypatch):
    monkeypatch.setattr(config, "HEARTBEAT_PERIOD", 1.0)
    monkeypatch.setattr(config, "HEARTBEAT_RATE", 200.0)
    assert config.heartbeat_period(8) == 1.0
    for engines in (1024, 4096, 20_000):
        assert engines / config.heartbeat_period(engines) <= 201
    assert config.heartbeat_period(4096) == pytest.approx(20.5)


def test_the_timeout_allows_missed_periods_but_never_less_than_the_floor(monkeypatch):
    monkeypatch.setattr(config, "HEARTBEAT_TIMEOUT", 5.0)
    monkeypatch.setattr(config, "HEARTBEAT_MISSES", 3.0)
    assert config.heartbeat_timeout(1.0) == 5.0
    assert config.heartbeat_timeout(20.5) == pytest.approx(61.5)
    assert silent_controller(20.5, 30.0) == pytest.approx(61.5)
    assert silent_controller(1.0, 30.0) == 30.0


def test_each_engine_is_held_to_the_period_it_was_told(monitor, monkeypatch):
    monkeypatch.setattr(config, "HEARTBEAT_PERIOD", 0.1)
    monkeypatch.setattr(config, "HEARTBEAT_TIMEOUT", 0.1)
    monkeypatch.setattr(config, "HEARTBEAT_RATE", 10.0)
    monkeypatch.setattr(config, "HEARTBEAT_MISSES", 2.0)
    told = [monitor.watch(bytes([i])) for i in range(30)]
    assert told[0] == 0.1 and told[-1] == pytest.approx(3.0)  # 30 engines at 10 pings a second
    now = time.monotonic()
    silent = monitor._silent(now + 1.0)  # the first engines were told 0.1 s: a 0.2 s timeout
    assert bytes([0]) in silent and bytes([29]) not in silent
    assert bytes([29]) in monitor._silent(now + 7.0)


def test_a_forgotten_engine_is_never_reported(monitor):
    monitor.watch(b"a")
    monitor.forget(b"a")
    assert monitor._silent(time.monotonic() + 3600) == []


def test_registration_retries_grow_and_spread():
    pauses = registration.pauses(1.0, 8.0)
    first = [next(pauses) for _ in range(6)]
    assert 0.75 <= first[0] <= 1.25 and 1.5 <= first[1] <= 2.5 and all(6 <= p <= 10 for p in first[3:])
    spread = {round(next(registration.pauses()), 6) for _ in range(50)}
    assert len(spread) > 40
