"""Functions bound to a view: ``@view.remote`` applies, ``@view.parallel`` maps."""
from __future__ import annotations

import functools
from typing import Any, Callable


class RemoteFunction:
    """Calling it applies the wrapped function on the view's targets."""

    def __init__(self, view, f: Callable, block: bool | None = None, **flags):
        self.view = view
        self.func = f
        self.block = block
        self.flags = flags
        functools.update_wrapper(self, f)

    def __call__(self, *args, **kwargs) -> Any:
        block = self.view.block if self.block is None else self.block
        with self.view.temp_flags(**self.flags):
            return self.view._apply(self.func, args, kwargs, block=block)


class ParallelFunction(RemoteFunction):
    """Calling it maps the wrapped function over its sequence arguments."""

    def __init__(self, view, f: Callable, map_options: dict, block: bool | None = None, **flags):
        super().__init__(view, f, block=block, **flags)
        self.map_options = map_options

    def __call__(self, *seqs) -> Any:
        block = self.view.block if self.block is None else self.block
        with self.view.temp_flags(**self.flags):
            return self.view.map(self.func, *seqs, block=block, **self.map_options)

    def map(self, *seqs) -> Any:
        return self(*seqs)
