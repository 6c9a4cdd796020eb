"""Where a Client finds its connection info, waiting for a batch job to write it."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..protocol import connection


def connection_info_from(connection_info, url_file, profile_dir, cluster_id, timeout: float) -> dict:
    """The connection info a Client was given: a dict, a file, ``$MPIHUB_CLIENT_INFO``,
    or the cluster's file in the profile (waited for up to ``timeout`` seconds)."""
    source = connection_info if connection_info is not None else url_file
    if isinstance(source, dict):
        return connection.check(source)
    if source is None:
        env = os.environ.get("MPIHUB_CLIENT_INFO")
        if env:
            return connection.check(json.loads(env), "$MPIHUB_CLIENT_INFO")
        source = connection.connection_file("client", cluster_id, profile_dir)
    path = Path(source)
    if not path.exists() and timeout > 0 and sys.stderr.isatty():
        wait_with_progress(path, timeout)
    return connection.read(path, timeout=max(timeout, 0))


def wait_with_progress(path: Path, timeout: float) -> None:
    """Wait for a connection file (a batch job's controller writes it once it starts),
    with a progress bar; polling, as a shared file system sends no notice."""
    from tqdm.auto import tqdm

    started = time.monotonic()
    with tqdm(total=round(timeout), unit="s", desc=f"waiting for {path.name}", file=sys.stderr,
              bar_format="{desc}: {n:.0f}/{total:.0f} s") as bar:
        while not path.exists() and (elapsed := time.monotonic() - started) < timeout:
            bar.update(elapsed - bar.n)
            time.sleep(0.1)
