"""``mpihub status``'s table, from an engine table and a queue status (the command on a
real cluster: tests/test_cli.py)."""
import pytest

from mpihub.cli import status_table
from mpihub.client.client import EngineInfo

pytestmark = pytest.mark.timeout(10)


def test_the_table_lines_up_and_shows_mpi_ranks_and_states():
    engines = {0: EngineInfo.from_description({"id": 0, "hostname": "node-a", "pid": 11, "mpi_rank": 0, "mpi_size": 2},
                                              now=100.0),
               1: EngineInfo.from_description({"id": 1, "hostname": "node-bb", "pid": 12345, "mpi_rank": 1,
                                               "mpi_size": 2, "retire_at": 99.0}, now=100.0)}
    table = status_table("c", engines, {0: {"queue": 3, "tasks": 1, "completed": 10}, "unassigned": 4})
    lines = table.splitlines()
    assert lines[0] == "cluster c: 2 engines, 4 load-balanced tasks waiting for one"
    assert len({len(line) for line in lines[1:]}) == 1  # every row as wide as the header
    assert lines[2].split() == ["0", "node-a", "11", "0/2", "running", "3", "1", "10"]
    assert lines[3].split() == ["1", "node-bb", "12345", "1/2", "retired", "0", "0", "0"]
    assert status_table(None, {}, {"unassigned": 0}) == "cluster default: 0 engines, 0 load-balanced tasks waiting for one"
