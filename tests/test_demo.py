"""`make demo` as a new user runs it: it succeeds, labels its timings (the warm figure and
the first call beside it) and leaves no process behind."""
import os
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.timeout(300)


def processes_with(tag: bytes) -> list[int]:
    """PIDs whose environment holds ``tag`` (every process the demo started inherits it)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as fh:
                    if tag in fh.read():
                        found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return found


def test_the_demo_succeeds_labels_its_timings_and_leaves_nothing():
    tag = f"MPIHUB_DEMO_RUN={uuid.uuid4().hex}"
    name, value = tag.split("=")
    demo = subprocess.run([sys.executable, "-m", "mpihub.demo"], capture_output=True, text=True, timeout=240,
                          env={**os.environ, name: value})
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    lines = demo.stdout.splitlines()
    assert lines[-1].startswith("demo succeeded")
    large = [line for line in lines if "MB" in line and " ms" in line and "x *= 2" not in line]
    assert len(large) == 5 and all("(first call " in line for line in large), large
    assert "median of the last 5, warm" in demo.stdout
    deadline = time.monotonic() + 10
    while (left := processes_with(tag.encode())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"the demo left processes behind: {left}"
