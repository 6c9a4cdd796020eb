"""The dashboard's counts, a pure state machine (the page and its JSON on real
controllers: tests/test_dashboard.py)."""
import pytest

from mpihub.controller.dashboard import HISTORY, DashboardStats

pytestmark = pytest.mark.timeout(10)


def test_stats_count_per_second_and_keep_the_last_failures():
    stats = DashboardStats(now=100.0)
    for t in (100.1, 100.5, 101.2):
        stats.task_finished(t, {"st": "ok"}, 0)
    stats.task_finished(104.0, {"st": "error", "id": "bad", "ename": "ValueError", "evalue": "no"}, 1)
    assert stats.throughput(105.5) == [[100, 2], [101, 1], [102, 0], [103, 0], [104, 1], [105, 0]]
    assert (stats.finished, stats.failed) == (4, 1)
    assert stats.failures[0] == {"msg_id": "bad", "engine_id": 1, "time": 104.0, "status": "error",
                                 "ename": "ValueError", "evalue": "no"}
    for i in range(60):
        stats.task_finished(200.0 + i, {"st": "error", "id": f"f{i}"}, 0)
    assert len(stats.failures) == 50 and stats.failures[0]["msg_id"] == "f59"
    stats.task_finished(10_000.0, {"st": "ok"}, 0)  # a long quiet spell: the history stays bounded
    assert len(stats.throughput(10_001.0)) == HISTORY
