"""The dependency book: conditions (after/follow, all/any, success/failure), held
tasks, deadlines; a pure state machine (end to end: tests/test_dependencies.py)."""
import pytest

from mpihub.controller.dependency_book import Condition, DependencyBook

pytestmark = pytest.mark.timeout(10)


def outcomes(table):
    return table.get


def test_conditions_all_any_success_failure():
    book = DependencyBook()
    table = {"ok0": ("ok", 0), "ok1": ("ok", 1), "bad": ("error", 1), "run": ("pending", None)}
    decide = lambda after=None, follow=None: book.decide(after, follow, outcomes(table))  # noqa: E731
    assert decide(Condition(frozenset({"ok0", "ok1"}))).state == "ready"
    assert decide(Condition(frozenset({"ok0", "run"}))).state == "wait"
    assert decide(Condition(frozenset({"ok0", "run"}), all=False)).state == "ready"
    impossible = decide(Condition(frozenset({"bad", "run"})))
    assert impossible.state == "impossible" and "bad ended with error" in impossible.reason
    assert decide(Condition(frozenset({"bad"}), success=False, failure=True)).state == "ready"
    assert decide(Condition(frozenset({"bad", "ok0"}), all=False, success=False, failure=True)).state == "ready"
    assert decide(Condition(frozenset({"ghost"}))).state == "impossible"
    follow = decide(follow=Condition(frozenset({"ok1", "bad"}), failure=True))
    assert follow.state == "ready" and follow.engines == {1}
    assert decide(follow=Condition(frozenset({"ok0", "ok1"}))).state == "impossible"  # two engines
    assert decide(follow=Condition(frozenset({"ok0", "ok1"}), all=False)).engines == {0, 1}


def test_held_tasks_are_released_or_expire():
    book = DependencyBook()
    table = {"a": ("pending", None), "b": ("pending", None)}
    book.hold("t1", Condition(frozenset({"a"})), None, deadline=None)
    book.hold("t2", Condition(frozenset({"a", "b"})), None, deadline=100.0)
    table["a"] = ("ok", 0)
    assert [(m, d.state) for m, d in book.finished("a", outcomes(table))] == [("t1", "ready")]
    assert book.next_deadline() == 100.0 and book.expired(99.0) == []
    assert book.expired(100.0) == ["t2"] and len(book) == 0
    with pytest.raises(ValueError):
        Condition.from_header({"ids": ["a"], "success": False, "failure": False})
    with pytest.raises(ValueError):
        Condition.from_header({"ids": "a"})


def test_deadlines_come_out_in_order_and_skip_released_tasks():
    book = DependencyBook()
    waiting = Condition(frozenset({"never"}))
    for msg_id, deadline in (("c", 30.0), ("a", 10.0), ("b", 20.0), ("free", 5.0)):
        book.hold(msg_id, waiting, None, deadline)
    book.hold("no-deadline", waiting, None, None)
    assert book.release("free") and not book.release("free")
    assert book.next_deadline() == 10.0
    assert book.expired(25.0) == ["a", "b"]
    assert book.next_deadline() == 30.0 and len(book) == 2
