"""The engine's kept replies (pure bookkeeping, no sockets)."""
from __future__ import annotations

import numpy
import pytest

from mpihub.engine.replies import SentReplies

pytestmark = pytest.mark.timeout(10)


def test_a_reply_of_one_envelope_is_kept_by_reference_on_its_channel():
    replies = SentReplies(count=10, nbytes=6400)
    envelope = b"e" * 50
    replies.answering("a")
    replies.sent("a", "task", [envelope])
    assert replies.answered() == ["a"]
    assert replies.replayable("task") == ["a"] and replies.replayable("direct") == []
    assert replies.frames("a", "task")[0] is envelope
    assert replies.frames("a", "direct") is None
    assert replies.kept_bytes == 50


def test_replies_with_buffers_or_too_large_are_answered_but_not_kept():
    replies = SentReplies(count=10, nbytes=6400)  # one reply at most 100 bytes
    for msg_id, frames in [("buffers", [b"e", numpy.ones(4)]), ("large", [b"x" * 101]),
                           ("view", [memoryview(b"e")])]:
        replies.answering(msg_id)
        replies.sent(msg_id, "task", frames)
    assert replies.answered() == ["buffers", "large", "view"]
    assert replies.replayable("task") == [] and replies.kept_bytes == 0


def test_the_oldest_go_first_by_count_and_by_bytes():
    replies = SentReplies(count=3, nbytes=6400)
    for i in range(5):
        replies.answering(str(i))
        replies.sent(str(i), "task", [b"r" * 100])
    assert replies.answered() == ["2", "3", "4"]
    assert replies.replayable("task") == ["2", "3", "4"] and replies.kept_bytes == 300

    by_bytes = SentReplies(count=1000, nbytes=64 * 100)
    for i in range(70):
        by_bytes.answering(str(i))
        by_bytes.sent(str(i), "task", [b"r" * 100])
    assert len(by_bytes.answered()) == 70
    assert by_bytes.replayable("task") == [str(i) for i in range(6, 70)] and by_bytes.kept_bytes == 6400


def test_a_reply_sent_without_answering_first_is_not_kept():
    replies = SentReplies(count=10, nbytes=6400)
    replies.sent("stray", "task", [b"e"])
    assert replies.replayable("task") == [] and replies.answered() == []
