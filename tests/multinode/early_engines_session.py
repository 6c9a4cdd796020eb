"""Engines whose job starts before the controller's, as seen from the login node: first an
engines job with no controller at all, which gives up at its bound and says why; then an
engines job on two nodes that waits while a controller job on the third starts 3 s
later, and registers with it. Prints one JSON object of what it saw.

    tests/multinode/on-login.sh .venv/bin/python tests/multinode/early_engines_session.py PROFILE_DIR
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import mpihub

LAUNCHER = Path(__file__).resolve().parents[2] / "launchers" / "mpihub-engines"


def sbatch(env: dict, log: Path, *args: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", f"--output={log}", "--time=5", *args], env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip().split(";")[0]


def state(job: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return next((w.split("=", 1)[1] for w in shown.split() if w.startswith("JobState=")), "GONE")


def wait_for_state(job: str, wanted: set[str], timeout: float) -> tuple[str, float]:
    """The job's state once it is one of ``wanted`` (or the last seen), and the seconds taken."""
    start = time.monotonic()
    while (now := state(job)) not in wanted and time.monotonic() - start < timeout:
        time.sleep(0.2)
    return now, time.monotonic() - start


def main(profile_dir: str) -> dict:
    out: dict = {}
    cluster_id = f"early{secrets.token_hex(3)}"
    profile = Path(profile_dir)
    env = {**os.environ, "MPIHUB_PYTHON": sys.executable, "MPIHUB_DIR": profile_dir, "MPIHUB_CLUSTER_ID": cluster_id}

    def engines(timeout: int) -> str:
        return f"bash {LAUNCHER} -n 4 --timeout {timeout}"

    alone = sbatch(env, profile / "alone.out", "-N2", "-n4", "--wrap", engines(3))
    out["alone_state"], out["alone_s"] = wait_for_state(alone, {"FAILED", "COMPLETED", "CANCELLED", "GONE"}, 60)
    out["alone_log"] = (profile / "alone.out").read_text()

    early = sbatch(env, profile / "early.out", "-N2", "-n4", "--exclusive", "--wrap", engines(120))
    out["early_state"], _ = wait_for_state(early, {"RUNNING"}, 60)
    time.sleep(3)  # the engines' job waits for the controller meanwhile
    controller = sbatch(env, profile / "controller.out", "-N1", "--exclusive", "--wrap",
                        f"{sys.executable} -m mpihub controller --ip 0.0.0.0 --db sqlite --cluster-id {cluster_id} "
                        f"--profile-dir {profile_dir}")
    started = time.monotonic()
    try:
        with mpihub.Client(cluster_id=cluster_id, profile_dir=profile_dir, timeout=60) as rc:
            rc.wait_for_engines(4, timeout=90, interactive=False)
            out["registered_s"] = time.monotonic() - started
            out["ids"] = rc.ids
            out["engine_hosts"] = sorted(set(rc[:].apply_sync(lambda: __import__("socket").gethostname())))
            out["controller_host"] = json.loads(
                (profile / "security" / f"mpihub-client-{cluster_id}.json").read_text())["location"]
            rc.shutdown(hub=True, block=True)
        out["jobs_after"] = [wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED", "GONE"}, 60)[0]
                             for job in (early, controller)]
        out["early_log"] = (profile / "early.out").read_text()
    finally:
        subprocess.run(["scancel", early, controller], timeout=30, check=False)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
