"""The replies an engine sent lately, kept so that those lost with the connection to
the controller (a restart, a network cut) can be sent again when it registers again.

Pure bookkeeping: the engine notes each task id as it starts answering it, then the
frames it sent. A reply that is one envelope (immutable bytes: small results travel
inside it) is kept as it is, by reference. One with zero-copy buffers is not kept: they
may be a user's live array (a pulled variable that later code changes), and copying
them would tax every large reply for the rare lost one, which is retried or fails
clearly instead. The controller learns which ids are answered and which of those can
be sent again, and asks for the replies it is missing.

Which ids to remember: a reply can be missing at the controller only if it was sent
shortly before the controller was last heard alive (it lags behind its heartbeat by its
queue and its store's commit) or after. So the ids answered since ``margin`` seconds
before the last normal pong are all kept, however many a long queue of direct tasks
ran while the controller was gone (up to ``most``), and at least the last ``count``.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence


class SentReplies:
    """Answered task ids (see the module), and the envelopes of those that fit ``nbytes``
    in all (one at most a 64th of it)."""

    def __init__(self, count: int, nbytes: int, margin: float = 10.0, most: int = 200_000):
        self.count = count
        self.nbytes = nbytes
        self.margin = margin
        self.most = most
        self.largest = nbytes // 64
        self._answered: OrderedDict[str, float] = OrderedDict()
        self._kept: OrderedDict[str, tuple[Hashable, list, int]] = OrderedDict()
        self.kept_bytes = 0

    def answering(self, msg_id: str, now: float, alive_at: float) -> None:
        """``msg_id`` is being answered at ``now`` (every way out of running it sends a
        reply); the controller was last heard alive at ``alive_at`` (same clock)."""
        self._answered[msg_id] = now
        self._answered.move_to_end(msg_id)
        horizon = alive_at - self.margin
        while len(self._answered) > self.count:
            oldest, at = next(iter(self._answered.items()))
            if at >= horizon and len(self._answered) <= self.most:
                break
            del self._answered[oldest]
            self._forget(oldest)

    def sent(self, msg_id: str, channel: Hashable, frames: Sequence) -> None:
        """The reply to ``msg_id`` went out on ``channel``: keep it if it is one
        envelope of bytes that fits."""
        self._forget(msg_id)
        if msg_id not in self._answered or len(frames) != 1 or not isinstance(frames[0], bytes):
            return
        size = len(frames[0])
        if size > self.largest:
            return
        self._kept[msg_id] = (channel, list(frames), size)
        self.kept_bytes += size
        while self.kept_bytes > self.nbytes:
            self._forget(next(iter(self._kept)))

    def answered(self) -> list[str]:
        """Every answered id this remembers, oldest first."""
        return list(self._answered)

    def replayable(self, channel: Hashable) -> list[str]:
        """The ids whose replies on ``channel`` can be sent again."""
        return [msg_id for msg_id, (where, _, _) in self._kept.items() if where == channel]

    def frames(self, msg_id: str, channel: Hashable) -> list | None:
        """The frames of a kept reply sent on ``channel``, or None."""
        kept = self._kept.get(msg_id)
        return kept[1] if kept is not None and kept[0] == channel else None

    def _forget(self, msg_id: str) -> None:
        kept = self._kept.pop(msg_id, None)
        if kept is not None:
            self.kept_bytes -= kept[2]
