"""The retry bookkeeping of load-balanced tasks, a pure state machine (the end-to-end
retries are in tests/test_retries.py)."""
import pytest

from mpihub.controller.retries import RetryBook

pytestmark = pytest.mark.timeout(10)


def test_retry_book_prefers_engines_that_have_not_failed():
    book = RetryBook()
    book.track("t", "request", retries=2, only=None)
    book.track("none", "request", retries=0, only=None)
    assert len(book) == 1 and book.retry("none", 0, [0, 1]) is None
    assert book.retry("t", 0, [0, 1, 2]) == ("request", frozenset({1, 2}))
    assert book.retry("t", 1, [0, 1, 2]) == ("request", frozenset({2}))
    assert book.retry("t", 2, [0, 1, 2]) is None  # no retries left
    assert len(book) == 0


def test_retry_book_reuses_the_only_engine_and_respects_targets():
    book = RetryBook()
    book.track("t", "request", retries=3, only=[1])
    assert book.retry("t", 1, [0, 1]) == ("request", frozenset({1}))  # no other engine may run it
    assert book.retry("t", 1, [0]) is None  # its engine is gone
    book.track("u", "request", retries=1, only=None)
    book.finished("u")
    assert book.retry("u", 0, [0, 1]) is None


def test_a_requeue_after_a_jobs_end_uses_up_no_retry():
    book = RetryBook()
    book.track("t", "request", retries=1, only=None)
    for _ in range(3):  # as often as engines' jobs end under it
        assert book.requeue("t", [1, 2]) == ("request", frozenset({1, 2}))
    assert book.retry("t", 1, [1, 2]) == ("request", frozenset({2}))  # its one retry is still there
    book.track("pinned", "request", retries=2, only=[0])
    assert book.requeue("pinned", [1]) is None and len(book) == 1  # only engine 0 could run it
    assert book.requeue("untracked", [0]) is None
