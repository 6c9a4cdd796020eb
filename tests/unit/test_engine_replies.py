"""The engine's kept replies (pure bookkeeping, no sockets)."""
from __future__ import annotations

import numpy
import pytest

from mpihub.engine.replies import SentReplies

pytestmark = pytest.mark.timeout(10)


def answer(replies: SentReplies, msg_id: str, frames: list, now: float = 0.0, alive_at: float = -100.0) -> None:
    replies.answering(msg_id, now, alive_at)
    replies.sent(msg_id, "task", frames)


def test_a_reply_of_one_envelope_is_kept_by_reference_on_its_channel():
    replies = SentReplies(count=10, nbytes=6400)
    envelope = b"e" * 50
    answer(replies, "a", [envelope])
    assert replies.answered() == ["a"]
    assert replies.replayable("task") == ["a"] and replies.replayable("direct") == []
    assert replies.frames("a", "task")[0] is envelope
    assert replies.frames("a", "direct") is None
    assert replies.kept_bytes == 50


def test_replies_with_buffers_or_too_large_are_answered_but_not_kept():
    replies = SentReplies(count=10, nbytes=6400)  # one reply at most 100 bytes
    for msg_id, frames in [("buffers", [b"e", numpy.ones(4)]), ("large", [b"x" * 101]),
                           ("view", [memoryview(b"e")])]:
        answer(replies, msg_id, frames)
    assert replies.answered() == ["buffers", "large", "view"]
    assert replies.replayable("task") == [] and replies.kept_bytes == 0


def test_past_the_count_only_ids_answered_since_shortly_before_the_controller_was_heard_stay():
    replies = SentReplies(count=3, nbytes=6400, margin=10.0, most=8)
    for i in range(5):  # long before the controller was last heard alive
        answer(replies, f"old{i}", [b"r" * 10], now=float(i), alive_at=100.0)
    assert replies.answered() == ["old2", "old3", "old4"]
    assert replies.replayable("task") == ["old2", "old3", "old4"] and replies.kept_bytes == 30
    for i in range(6):  # within its margin, and on while it is gone: all stay, up to ``most``
        answer(replies, f"new{i}", [b"r" * 10], now=95.0 + i, alive_at=100.0)
    assert replies.answered() == [f"new{i}" for i in range(6)]
    for i in range(6, 10):
        answer(replies, f"new{i}", [b"r" * 10], now=95.0 + i, alive_at=100.0)
    assert replies.answered() == [f"new{i}" for i in range(2, 10)]  # ``most`` bounds it
    answer(replies, "later", [b"r" * 10], now=200.0, alive_at=200.0)  # heard again: back to the count
    assert replies.answered() == ["new8", "new9", "later"]


def test_kept_envelopes_are_bounded_by_bytes_oldest_first():
    replies = SentReplies(count=1000, nbytes=64 * 100)
    for i in range(70):
        answer(replies, str(i), [b"r" * 100])
    assert len(replies.answered()) == 70
    assert replies.replayable("task") == [str(i) for i in range(6, 70)] and replies.kept_bytes == 6400


def test_a_reply_sent_without_answering_first_is_not_kept():
    replies = SentReplies(count=10, nbytes=6400)
    replies.sent("stray", "task", [b"e"])
    assert replies.replayable("task") == [] and replies.answered() == []
