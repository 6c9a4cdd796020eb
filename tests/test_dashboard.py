"""The live dashboard (``--dashboard``): its JSON and token on a real controller
(its counts: tests/unit/test_dashboard_stats.py), and its page rendered by a real headless Chromium
(Debian's ``chromium``, which ``make test`` installs: tests/browser/setup.sh)."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import mpihub

from support import run_cluster

pytestmark = pytest.mark.timeout(120)

DASHBOARD = {"controller_args": ["--dashboard", "0"]}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@mpihub.interactive
def fail(i):
    raise ValueError(f"task {i} fails on purpose")


@pytest.fixture(scope="module")
def busy(request):
    """A cluster with the dashboard on, after 200 tasks and 3 failures."""
    for running in run_cluster(2, **DASHBOARD):
        rc = running.client
        rc.wait_for_engines(2, timeout=20, interactive=False)
        lb = rc.load_balanced_view()
        lb.map_sync(lambda x: x, range(200))
        for i in range(3):
            with pytest.raises(mpihub.RemoteError):
                lb.apply_sync(fail, i)
        time.sleep(1.2)  # the controller publishes once a second
        yield running


def dashboard_url(running) -> str:
    return json.loads(running.cluster.client_file.read_text())["dashboard"]


def fetch_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url.replace("/?token=", "/api/status?token="), timeout=10).read())


def test_the_json_has_engines_throughput_and_failures(busy):
    data = fetch_json(dashboard_url(busy))
    pids = {e.pid for e in busy.client.engines.values()}
    assert [e["id"] for e in data["engines"]] == [0, 1] and {e["pid"] for e in data["engines"]} == pids
    assert all(e["state"] == "running" and e["host"] for e in data["engines"])
    assert sum(e["done"] for e in data["engines"]) == data["finished"] == 203 and data["failed"] == 3
    assert sum(count for _, count in data["throughput"]) == 203, data["throughput"]
    assert [f["ename"] for f in data["failures"]] == ["ValueError"] * 3
    assert "fails on purpose" in data["failures"][0]["evalue"]


def test_no_token_no_data(busy):
    url = dashboard_url(busy)
    for wrong in (url.split("?")[0], url.split("?")[0] + "api/status", url.split("?")[0] + "api/status?token=x"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(wrong, timeout=10)
        assert info.value.code == 403


def chromium(*args: str, profile) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=90)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: tests/browser/setup.sh installs it")
        pytest.skip("no chromium here (tests/browser/setup.sh installs it, as root)")
    return tmp_path


def test_chromium_renders_the_page(busy, browser):
    done = chromium("--dump-dom", dashboard_url(busy), profile=browser / "profile")
    dom = done.stdout
    assert "<table id=\"engines\">" in dom, done.stderr[-2000:]
    rows = dom.split("<tbody>")[1].split("</tbody>")[0]
    assert rows.count("<tr>") == 2 and "state-running" in rows
    assert "203 tasks finished" in dom and "3 failed" in dom
    failures = dom.split("<tbody>")[2].split("</tbody>")[0]
    assert failures.count("<tr>") == 3 and "ValueError: task" in failures
    points = dom.split('points="')[1].split('"')[0]
    assert len(points.split()) >= 1 and '<div id="error"></div>' in dom


def test_chromium_screenshot(busy, browser):
    shot = browser / "dashboard.png"
    chromium(f"--screenshot={shot}", "--window-size=1000,900", dashboard_url(busy), profile=browser / "profile")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 900) and len(data) > 20_000  # a page, not a blank


@pytest.mark.layouts("split")
def test_a_split_controller_serves_it_too(fresh_cluster):
    """The split Hub asks its paths for their counts and queues once a second."""
    running = fresh_cluster(2, **DASHBOARD)
    lb = running.client.load_balanced_view()
    lb.map_sync(lambda x: x, range(50))
    running.client[0].apply_sync(lambda: "direct")
    with pytest.raises(mpihub.RemoteError):
        lb.apply_sync(fail, 9)
    url = dashboard_url(running)
    deadline = time.monotonic() + 10
    while (data := fetch_json(url))["finished"] < 52 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [e["id"] for e in data["engines"]] == [0, 1] and all(e["state"] == "running" for e in data["engines"])
    assert data["finished"] == 52 and data["failed"] == 1 and sum(c for _, c in data["throughput"]) == 52
    assert sum(e["done"] for e in data["engines"]) == 52 and data["failures"][0]["ename"] == "ValueError"
