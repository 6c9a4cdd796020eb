"""DirectView and LoadBalancedView: how calls reach engines.

A DirectView call on N engines is ONE message; the controller fans it out. Scatter
sends each engine its own part. A LoadBalancedView call is one task that the
controller's scheduler places on an engine.
"""
from __future__ import annotations

import builtins
import contextlib
import functools
import os
import weakref
from typing import Any, Callable, Iterator

from .. import dependency, errors, partition
from ..collective_function import is_collective
from ..engine import mpi_collectives, ops
from ..protocol import serialize
from ..protocol.schema import Key, Msg
from . import mpi_plan
from .asyncresult import AsyncMapResult, AsyncResult
from .futures_executor import ViewExecutor
from .lazymap import lazy_map
from .remotefunction import ParallelFunction, RemoteFunction


@functools.lru_cache(maxsize=None)
def _payload_of(f: Callable) -> tuple[bytes, list]:
    """Serialized helper from :mod:`mpihub.engine.ops` (pickled by reference, cached)."""
    return serialize.serialize(f)


class View:
    """What both views share: flags, apply/map spellings and waiting."""

    flag_names: tuple[str, ...] = ("block", "track")

    def __init__(self, client, targets):
        self.client = client
        self._targets = targets
        self.block = False
        self.track = False
        self._outstanding: weakref.WeakSet[AsyncResult] = weakref.WeakSet()

    # -- flags ------------------------------------------------------------------------

    def set_flags(self, **flags) -> "View":
        """Set flags (``block``, ``retries``, ...); returns the view, so calls chain."""
        for name, value in flags.items():
            if name not in self.flag_names:
                raise KeyError(f"{type(self).__name__} has no flag {name!r}; flags: {sorted(self.flag_names)}")
            setattr(self, name, value)
        return self

    @contextlib.contextmanager
    def temp_flags(self, **flags) -> Iterator["View"]:
        saved = {name: getattr(self, name) for name in flags}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            self.set_flags(**saved)

    @property
    def targets(self):
        return self._targets

    @property
    def executor(self) -> "ViewExecutor":
        """This view as a :class:`concurrent.futures.Executor` (``submit``, ``map``)."""
        return ViewExecutor(self)

    # -- calls ------------------------------------------------------------------------

    def apply(self, f: Callable, *args, **kwargs) -> Any:
        return self._apply(f, args, kwargs, block=self.block)

    def apply_sync(self, f: Callable, *args, **kwargs) -> Any:
        return self._apply(f, args, kwargs, block=True)

    def apply_async(self, f: Callable, *args, **kwargs) -> AsyncResult:
        return self._apply(f, args, kwargs, block=False)

    def map_sync(self, f: Callable, *seqs, **kwargs) -> list:
        return self.map(f, *seqs, block=True, **kwargs)

    def map_async(self, f: Callable, *seqs, **kwargs) -> AsyncMapResult:
        return self.map(f, *seqs, block=False, **kwargs)

    def _blocking(self, block: bool | None) -> bool:
        return self.block if block is None else block

    def _finish(self, ar: AsyncResult, block: bool | None) -> Any:
        if self._blocking(block):
            try:
                return ar.get()
            finally:
                if ar.ready():
                    self.client.core.blocking_call_done(ar)
        self._outstanding.add(ar)
        return ar

    def _apply(self, f, args, kwargs, block=None, track=None):
        raise NotImplementedError

    def wait(self, jobs=None, timeout: float = -1) -> bool:
        """Wait for the given results, by default every result this view returned."""
        if jobs is None:
            jobs = [ar for ar in list(self._outstanding) if not ar.ready()]
        return self.client.wait(jobs, timeout)

    def abort(self, jobs=None, targets=None, block: bool = True, interrupt: bool = False) -> None:
        self.client.abort(jobs, targets if targets is not None else self._abort_targets(), block, interrupt)

    def _abort_targets(self):
        return None

    def get_result(self, msg_ids) -> AsyncResult:
        return self.client.get_result(msg_ids)

    def remote(self, block: bool | None = None, **flags) -> Callable[[Callable], RemoteFunction]:
        """Decorator: calling the function applies it on this view."""
        return lambda f: RemoteFunction(self, f, block=block, **flags)

    def parallel(self, dist: str = "b", block: bool | None = None, **flags) -> Callable[[Callable], ParallelFunction]:
        """Decorator: calling the function maps it over its (partitioned) arguments."""
        return lambda f: ParallelFunction(self, f, self._map_options(dist), block=block, **flags)

    def _map_options(self, dist: str) -> dict:
        """Keyword arguments of this view's ``map`` that ``parallel`` passes on."""
        return {}


def _check_callable(f: Callable) -> None:
    if not callable(f):
        raise TypeError(f"apply needs a callable, not {type(f).__name__}")


def _check_mappable(f: Callable) -> None:
    _check_callable(f)
    if is_collective(f):
        raise ValueError(f"{getattr(f, '__name__', 'f')} is an MPI collective function: mapping it would call it "
                         "a different number of times on each rank; apply it to a DirectView over the world")


class DirectView(View):
    """Calls on named engines; ``rc[0]`` gives single results, other views lists."""

    def __repr__(self) -> str:
        return f"<DirectView {self._targets}>"

    def _target_list(self, targets=None) -> list[int]:
        return self.client.core.resolve_targets(self._targets if targets is None else targets)

    def _single(self, targets=None) -> bool:
        return isinstance(self._targets if targets is None else targets, int)

    def _abort_targets(self):
        return self._targets

    def _map_options(self, dist: str) -> dict:
        return {"dist": dist}

    def _send(self, kind: str, content: bytes, buffers: list, extra: dict, targets, track, fname: str,
              sync: bool, postprocess=None) -> AsyncResult:
        engines = self._target_list(targets)
        named, ids = self.client.core.id_block(engines)
        ar = AsyncResult(self.client, ids, fname=fname, single=self._single(targets), postprocess=postprocess)
        header = {Key.TYPE: kind, **named, **extra}
        track = self.track if track is None else track
        self.client.core.submit(header, content, buffers, ar, track=track, sync=sync)
        return ar

    def _call(self, f_payload, args, kwargs, targets, track, fname: str, sync: bool, postprocess=None,
              extra: dict | None = None) -> AsyncResult:
        try:
            content, buffers, fields = serialize.serialize_call(f_payload, args, kwargs)
        except Exception as exc:
            raise TypeError(f"cannot serialize the arguments of {fname or 'the call'}: {exc}") from exc
        return self._send(Msg.APPLY, content, buffers, {**fields, **(extra or {})}, targets, track, fname, sync,
                          postprocess)

    def _apply(self, f, args, kwargs, block=None, track=None, targets=None):
        _check_callable(f)
        name = getattr(f, "__name__", "function")
        extra = {}
        if is_collective(f):
            extra[Key.RANKS] = mpi_plan.whole_world(self.client, self._target_list(targets), name)
        try:
            payload = serialize.serialize(f)
        except Exception as exc:
            raise TypeError(f"cannot serialize {name}: {exc}") from exc
        return self._finish(self._call(payload, args, kwargs, targets, track, name, self._blocking(block),
                                       extra=extra), block)

    def _op(self, op: Callable, *args, targets=None, block=None, track=None, postprocess=None) -> Any:
        ar = self._call(_payload_of(op), args, {}, targets, track, op.__name__, self._blocking(block), postprocess)
        return self._finish(ar, block)

    # -- code ---------------------------------------------------------------------

    def execute(self, code: str, targets=None, block=None, silent: bool = True, stream: bool = False) -> Any:
        """Run ``code`` on each engine; with ``silent=False`` the last expression's value
        is the result. With ``stream``, printed lines come as they are printed, to the
        result's ``add_output_callback`` (and, as always, all of them in ``stdout``)."""
        if not isinstance(code, str):
            raise TypeError(f"execute needs a str of code, not {type(code).__name__}")
        fields = {Key.SILENT: bool(silent), **({Key.STREAM_OUTPUT: True} if stream else {})}
        ar = self._send(Msg.EXECUTE, code.encode("utf-8"), [], fields, targets, False, "execute",
                        self._blocking(block))
        return self._finish(ar, block)

    def run(self, filename: str | os.PathLike, targets=None, block=None) -> Any:
        with open(filename, encoding="utf-8") as f:
            return self.execute(f.read(), targets=targets, block=block)

    # -- namespace ------------------------------------------------------------------

    def push(self, ns: dict, targets=None, block=None, track=None) -> Any:
        """Store each name on every target; large numpy data to one MPI world is sent
        once and ``Bcast`` among the engines."""
        if not isinstance(ns, dict):
            raise TypeError(f"push needs a dict of names to values, not {type(ns).__name__}")
        return self._store_everywhere(None, ns, targets, block, track, "auto")

    def pull(self, names: str | list[str], targets=None, block=None) -> Any:
        if not isinstance(names, (str, list, tuple)):
            raise TypeError("pull needs a name or a list of names")
        return self._op(ops.pull, names if isinstance(names, str) else list(names), targets=targets, block=block)

    def update(self, ns: dict) -> Any:
        return self.push(ns)

    def get(self, name: str) -> Any:
        return self.pull(name, block=True)

    def __setitem__(self, key: str, value: Any) -> None:
        self.push({key: value}, block=True)

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    # -- data movement ------------------------------------------------------------------

    def _collective(self, op: Callable, plan: mpi_plan.Plan, spec: dict, frames: list, block, track,
                    postprocess=None) -> Any:
        """One MPI call on ``plan``'s targets; ``frames`` (data) go to the root alone."""
        content, buffers, extra = serialize.serialize_call(_payload_of(op), (plan.spec(**spec),), {})
        extra[Key.RANKS] = plan.ranks
        if frames:
            extra[Key.BUFFERS_FOR] = plan.engines[plan.root]
        ar = self._send(Msg.APPLY, content, [*buffers, *frames], extra, plan.engines, track, op.__name__,
                        self._blocking(block), postprocess or (lambda _: None))
        return self._finish(ar, block)

    def scatter(self, key: str, seq, dist: str = "b", flatten: bool = False, targets=None, block=None,
                track=None, via: str = "auto") -> Any:
        """Split ``seq`` and store part i on engine i as ``key``.

        Over MPI the client sends ``seq`` once, to the lowest-ranked target, which
        ``Scatterv``s it; over ZMQ each engine is sent its own part.
        """
        engines = self._target_list(targets)
        plan = mpi_plan.plan(self.client, via, engines, seq.nbytes if mpi_plan.is_array(seq) else 0)
        if plan is not None:
            fields, frames = mpi_plan.scatter_payload(seq, len(engines), dist)
            return self._collective(mpi_collectives.scatter, plan, dict(fields, key=key, dist=dist, flatten=flatten),
                                    frames, block, track)
        parts = partition.split(seq, len(engines), dist)
        ids = [self.client.core.new_id() for _ in engines]
        ar = AsyncResult(self.client, ids, fname="scatter", postprocess=lambda _: None)
        track = self.track if track is None else track
        for index, (engine, part) in enumerate(zip(engines, parts)):
            op, args = (ops.push_flat, (key, part)) if flatten else (ops.push, ({key: part},))
            content, buffers, extra = serialize.serialize_call(_payload_of(op), args, {})
            header = {Key.TYPE: Msg.APPLY, Key.TARGETS: [engine], Key.IDS: [ids[index]], **extra}
            self.client.core.submit(header, content, buffers, ar, offset=index, track=track,
                                    sync=self._blocking(block))
        return self._finish(ar, block)

    def gather(self, key: str, dist: str = "b", targets=None, block=None, via: str = "auto") -> Any:
        """Join ``key`` from every engine (inverse of scatter); over MPI the lowest-ranked
        target ``Gatherv``s the parts and sends the whole once."""
        engines = self._target_list(targets)
        partition.check_dist(dist)
        plan = mpi_plan.plan(self.client, via, engines)
        if plan is not None:
            return self._collective(mpi_collectives.gather, plan, {"key": key, "dist": dist}, [], block, None,
                                    lambda values: values[plan.root])
        return self._op(ops.pull, key, targets=engines, block=block,
                        postprocess=lambda parts: partition.join(parts, dist))

    def bcast(self, key: str, value: Any, targets=None, block=None, via: str = "auto") -> Any:
        """Store one object as ``key`` on every target: sent once, then fanned out by the
        controller (ZMQ) or ``Bcast`` from the lowest-ranked target (MPI)."""
        return self._store_everywhere(key, value, targets, block, None, via)

    def _store_everywhere(self, key: str | None, value: Any, targets, block, track, via: str) -> Any:
        engines = self._target_list(targets)
        frames = []  # pickled only where MPI may take it, to count its numpy bytes
        if via != "zmq" and mpi_plan.in_one_world(self.client, engines):
            frames = mpi_plan.pickled(value)
        plan = mpi_plan.plan(self.client, via, engines, mpi_plan.buffer_bytes(frames))
        if plan is not None:
            return self._collective(mpi_collectives.bcast, plan, {"key": key}, frames, block, track,
                                    lambda values: values[0] if self._single(targets) else values)
        return self._op(ops.push, value if key is None else {key: value}, targets=targets, block=block,
                        track=track)

    def _reduce_plan(self, op: str | Callable, via: str, engines: list[int]) -> mpi_plan.Plan | None:
        """A callable op runs on the client unless ``via="mpi"`` asks for it on the engines."""
        return mpi_plan.plan(self.client, "zmq" if callable(op) and via == "auto" else via, engines)

    def reduce(self, key: str, op: str | Callable = "sum", targets=None, block=None, via: str = "auto") -> Any:
        """Combine ``key`` across engines with ``op`` (in target order) and return it."""
        engines = self._target_list(targets)
        combine = ops.reducer(op)
        plan = self._reduce_plan(op, via, engines)
        if plan is not None:
            return self._collective(mpi_collectives.reduce, plan, {"key": key, "op": _op_name(op)}, [], block, None,
                                    lambda values: values[-1])
        return self._op(ops.pull, key, targets=engines, block=block,
                        postprocess=lambda values: functools.reduce(combine, values))

    def allreduce(self, key: str, op: str | Callable = "sum", dest: str | None = None, targets=None,
                  block=None, via: str = "auto") -> Any:
        """Combine ``key`` across engines and store the result on each as ``dest``."""
        engines = self._target_list(targets)
        ops.reducer(op)  # an unknown op fails here, before anything is sent
        plan = self._reduce_plan(op, via, engines)
        if plan is not None:
            spec = {"key": key, "op": _op_name(op), "dest": dest or key}
            return self._collective(mpi_collectives.allreduce, plan, spec, [], block, None, lambda values: values)
        value = self.reduce(key, op, targets=engines, block=True, via=via)
        return self.push({dest or key: value}, targets=engines, block=block)

    # -- map and imports ----------------------------------------------------------------

    def map(self, f: Callable, *seqs, block=None, dist: str = "b") -> Any:
        """Apply ``f`` element-wise, each engine taking one contiguous block."""
        _check_mappable(f)
        if not seqs:
            raise TypeError("map needs at least one sequence")
        engines = self._target_list()
        lengths = {len(s) for s in seqs}
        if len(lengths) != 1:
            raise ValueError(f"sequences differ in length: {sorted(lengths)}")
        splits = [partition.split(s, len(engines), dist) for s in seqs]
        payload = serialize.serialize(functools.partial(ops.map_chunk, f))
        chunks = [(engine, tuple(split[i] for split in splits)) for i, engine in enumerate(engines)]
        chunks = [chunk for chunk in chunks if len(chunk[1][0])] or chunks[:1]
        ids = [self.client.core.new_id() for _ in chunks]
        ar = AsyncMapResult(self.client, ids, [len(args[0]) for _, args in chunks],
                            fname=getattr(f, "__name__", "map"), dist=dist)
        for index, (engine, args) in enumerate(chunks):
            content, buffers, extra = serialize.serialize_call(payload, args, {})
            header = {Key.TYPE: Msg.APPLY, Key.TARGETS: [engine], Key.IDS: [ids[index]], **extra}
            self.client.core.submit(header, content, buffers, ar, offset=index, sync=self._blocking(block))
        return self._finish(ar, block)

    @contextlib.contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Imports inside the block also run on every target engine."""
        modules: list[str] = []
        real_import = builtins.__import__

        def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level == 0 and name not in modules:
                modules.append(name if not fromlist else f"{name}:{','.join(fromlist)}")
            if local:
                return real_import(name, globals, locals, fromlist, level)
            return real_import(name, globals, locals, fromlist, level) if name in ("mpihub",) else None

        builtins.__import__ = recording_import
        try:
            yield
        finally:
            builtins.__import__ = real_import
        lines = []
        for entry in modules:
            name, _, names = entry.partition(":")
            lines.append(f"from {name} import {names}" if names else f"import {name}")
            if not quiet:
                print(f"importing {names + ' from ' if names else ''}{name} on engine(s)")
        if lines:
            self.execute("\n".join(lines), block=True)


def _op_name(op: str | Callable) -> str | Callable:
    """A named op in the canonical spelling engines know; callables go as they are."""
    return op.lower() if isinstance(op, str) else op


class LoadBalancedView(View):
    """Each call is a task the controller's scheduler places on an engine.

    Flags: ``retries=n`` runs a task again, up to n times, when it raises or its engine
    dies, on an engine that has not failed it where one exists. ``after`` and ``follow``
    (AsyncResults, msg_ids or a :class:`~mpihub.dependency.Dependency`) hold a task until
    others finish, or send it where they ran; ``timeout`` bounds that wait.
    """

    flag_names = ("block", "track", "retries", "after", "follow", "timeout")

    def __init__(self, client, targets):
        super().__init__(client, targets)
        self.retries = 0
        self.after = None
        self.follow = None
        self.timeout = None

    def __repr__(self) -> str:
        return f"<LoadBalancedView {self._targets if self._targets is not None else 'all'}>"

    def _header(self, msg_id: str) -> dict:
        header = {Key.TYPE: Msg.APPLY, Key.LOAD_BALANCED: True, Key.ID: msg_id}
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {self.retries!r}")
        if self.retries:
            header[Key.RETRIES] = self.retries
        for flag, field in ((self.after, Key.AFTER), (self.follow, Key.FOLLOW)):
            condition = dependency.as_header(flag)
            if condition is not None:
                header[field] = condition
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or self.timeout <= 0:
                raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
            header[Key.DEPENDENCY_TIMEOUT] = self.timeout
        if self._targets is not None:
            header[Key.ONLY] = self.client.core.resolve_targets(self._targets)
        elif not self.client.ids:
            raise self.client.core.no_engines("no engines are registered to balance over; "
                                          "wait with rc.wait_for_engines(n)")
        return header

    def _apply(self, f, args, kwargs, block=None, track=None):
        _check_callable(f)
        name = getattr(f, "__name__", "function")
        if is_collective(f):
            raise ValueError(f"{name} is an MPI collective function: it must run on every rank of an MPI world "
                             "together, so apply it with a DirectView over the world, not a LoadBalancedView")
        try:
            content, buffers, extra = serialize.serialize_call(serialize.serialize(f), args, kwargs)
        except Exception as exc:
            raise TypeError(f"cannot serialize {name} or its arguments: {exc}") from exc
        msg_id = self.client.core.new_id()
        header = {**self._header(msg_id), **extra}
        ar = AsyncResult(self.client, [msg_id], fname=name, single=True)
        track = self.track if track is None else track
        self.client.core.submit(header, content, buffers, ar, track=track, sync=self._blocking(block))
        return self._finish(ar, block)

    def map(self, f: Callable, *seqs, chunksize: int = 1, ordered: bool = True, block=None) -> Any:
        """Tasks of ``chunksize`` elements each; results in order (or completion order
        when iterating with ``ordered=False``)."""
        _check_mappable(f)
        if not seqs:
            raise TypeError("map needs at least one sequence")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive int, not {chunksize!r}")
        lengths = {len(s) for s in seqs}
        if len(lengths) != 1:
            raise ValueError(f"sequences differ in length: {sorted(lengths)}")
        (length,) = lengths
        name = getattr(f, "__name__", "map")
        try:
            payload = serialize.serialize(functools.partial(ops.map_chunk, f))
        except Exception as exc:
            raise TypeError(f"cannot serialize {name}: {exc}") from exc
        starts = range(0, length, chunksize)
        ids = [self.client.core.new_id() for _ in starts]
        ar = AsyncMapResult(self.client, ids, [min(chunksize, length - s) for s in starts], fname=name,
                            ordered=ordered)
        base = self._header("") if ids else {}
        for index, start in enumerate(starts):
            chunk = tuple(s[start:start + chunksize] for s in seqs)
            content, buffers, extra = serialize.serialize_call(payload, chunk, {})
            header = {**base, "id": ids[index], **extra}
            self.client.core.submit(header, content, buffers, ar, offset=index, sync=self._blocking(block))
        return self._finish(ar, block)

    def imap(self, f: Callable, *seqs, chunksize: int = 1, ordered: bool = True,
             max_outstanding: int | str = "auto") -> Iterator[Any]:
        """Results as they arrive (in order, or in completion order), reading the inputs
        only as needed: at most ``max_outstanding`` tasks are in flight ("auto": two per
        engine), so an endless generator works. Breaking out of the loop, or ``close()``
        on the iterator, aborts the tasks still queued."""
        _check_mappable(f)
        if not seqs:
            raise TypeError("imap needs at least one sequence")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive int, not {chunksize!r}")
        if max_outstanding == "auto":
            max_outstanding = 2 * max(1, len(self.client.core.resolve_targets(self._targets)))
        if not isinstance(max_outstanding, int) or max_outstanding < 1:
            raise ValueError(f"max_outstanding must be a positive int or 'auto', not {max_outstanding!r}")
        name = getattr(f, "__name__", "imap")
        try:
            payload = serialize.serialize(functools.partial(ops.map_chunk, f))
        except Exception as exc:
            raise TypeError(f"cannot serialize {name}: {exc}") from exc

        def submit(chunk: tuple) -> AsyncResult:
            msg_id = self.client.core.new_id()
            content, buffers, extra = serialize.serialize_call(payload, chunk, {})
            ar = AsyncResult(self.client, [msg_id], fname=name, single=True)
            self.client.core.submit({**self._header(msg_id), **extra}, content, buffers, ar)
            return ar

        def abort(msg_ids: list[str]) -> None:
            self.client.abort(msg_ids, block=False)

        return lazy_map(submit, abort, seqs, chunksize, ordered, max_outstanding)
