"""``python -m mpihub.engine [--mpi] ...``: the same as ``mpihub engine``."""
import sys

from ..cli import main

raise SystemExit(main(["engine", *sys.argv[1:]]))
