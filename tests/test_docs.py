"""The documentation site builds with mkdocs in strict mode (a warning is an error):
every page in the nav, every link and anchor, the API reference from the docstrings,
and the benchmark tables included from bench/RESULTS.md."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=150, cwd=config.parent,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_docs_build_strictly(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "wait_for_engines" in api and "ViewExecutor" in api and "CompositeError" in api
    assert "apply round trip" in (tmp_path / "site" / "benchmarks" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build can fail: the same site with one page that links nowhere."""
    copy = tmp_path / "copy"
    for name in ("docs", "src", "bench"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    page = copy / "docs" / "quickstart.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    done = build(copy / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "missing.md" in done.stdout + done.stderr
