"""IPython magics: ``%px``, ``%%px``, ``%autopx``, ``%pxresult``.

``rc.activate()`` (done for the first Client created inside IPython) registers them on
a DirectView; ``suffix`` gives another view magics of its own (``%px_evens``):

- ``%px CODE`` runs one line on every engine of the view, and waits;
- ``%%px [--targets 0,2|0:4] [--block|--noblock] [--stream] [--local]`` runs the cell;
- ``%autopx`` turns on (and off again) running every cell as ``%%px``;
- ``%pxresult`` shows the outputs of the last ``--noblock`` run, once it is done.

Output comes per engine, each line prefixed by the engine id: ``[stdout:0]``,
``[stderr:1]``, ``Out[2]:`` for the value of a cell's last expression, ``[3:execute]``
for an error. With ``--stream``, each line is shown as the engine prints it, and each
engine's value or error as soon as that engine finishes. A blocking run interrupted
with Ctrl-C interrupts the engines too.
"""
from __future__ import annotations

import queue
import sys

from IPython.core.magic import Magics, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .. import errors
from .asyncresult import AsyncResult


def parse_targets(text: str | None):
    """``--targets``: ``all``, one id, ``0,2,5`` or a slice ``0:4`` / ``::2``."""
    if text is None or text == "all":
        return None
    if ":" in text:
        return slice(*(int(part) if part else None for part in text.split(":")))
    ids = [int(part) for part in text.split(",") if part.strip()]
    return ids[0] if len(ids) == 1 else ids


def show_lines(engine, name: str, text: str) -> None:
    """Print output of an engine, every line prefixed by its engine id."""
    for line in text.splitlines():
        print(f"[{name}:{engine}] {line}", file=sys.stdout if name == "stdout" else sys.stderr)


def show_reply(ar: AsyncResult, index: int, shown: dict | None = None) -> None:
    """Print one engine's output (past the characters ``shown`` already, by stream
    name) and the value of its last expression, or its error."""
    md = ar._metadata_of(index)
    engine = md["engine_id"]
    for name in ("stdout", "stderr"):
        show_lines(engine, name, md[name][(shown or {}).get(name, 0):])
    value = ar._value(index)
    if isinstance(value, errors.RemoteError):
        print(f"[{engine}:execute] {value.ename}: {value.evalue}", file=sys.stderr)
    elif isinstance(value, Exception):
        print(f"[{engine}:execute] {type(value).__name__}: {value}", file=sys.stderr)
    elif value is not None:
        print(f"Out[{engine}]: {value!r}")


@magics_class
class ParallelMagics(Magics):
    """The magics of one view; their names (with the suffix) are set per instance."""

    def __init__(self, shell, view, suffix: str = ""):
        super().__init__(shell)
        self.view = view
        self.suffix = suffix
        self.last_result: AsyncResult | None = None
        self.autopx = False
        self.magics = {"line": {f"px{suffix}": self.px, f"autopx{suffix}": self.toggle_autopx,
                                f"pxresult{suffix}": self.pxresult},
                       "cell": {f"px{suffix}": self.cell_px}}

    @no_var_expand  # $x and {x} are the engines' business
    def px(self, line: str = "") -> None:
        """Run one line of code on every engine of the view, and show the outputs."""
        self._run(line, None, block=True, stream=False)

    @no_var_expand
    @magic_arguments()
    @argument("-t", "--targets", default=None, help="engines: all, an id, 0,2,5 or a slice 0:4")
    @argument("-b", "--block", action="store_true", default=None, help="wait and show the outputs (default)")
    @argument("-a", "--noblock", action="store_false", dest="block", help="return at once; %%pxresult shows them")
    @argument("--stream", action="store_true", help="show each engine's output as it prints it")
    @argument("--local", action="store_true", help="run the cell here too, after the engines")
    def cell_px(self, line: str = "", cell: str = "") -> AsyncResult | None:
        """Run the cell on the view's engines."""
        args = parse_argstring(self.cell_px, line)
        ar = self._run(cell, parse_targets(args.targets), block=args.block is not False, stream=args.stream)
        if args.local:
            self.shell.run_cell(cell)
        return None if args.block is not False else ar

    def pxresult(self, line: str = "") -> None:
        """Show the outputs of the last run that did not wait."""
        if self.last_result is None:
            raise RuntimeError(f"no %px{self.suffix} run to show yet")
        self._show(self.last_result, None)

    def toggle_autopx(self, line: str = "") -> None:
        """Run every cell on the engines as %%px, until %autopx again."""
        transformers = self.shell.input_transformers_cleanup  # the raw cell, before IPython reads its magics
        self.autopx = not self.autopx
        if self.autopx:
            transformers.append(self._as_px)
            print(f"%autopx{self.suffix} on: cells run on the engines; %autopx{self.suffix} again to stop")
        else:
            transformers.remove(self._as_px)
            print(f"%autopx{self.suffix} off")

    def _as_px(self, lines: list[str]) -> list[str]:
        """An input transformer: a cell becomes a call of %%px (but %autopx itself)."""
        code = "".join(lines)
        if not code.strip() or code.lstrip().startswith(f"%autopx{self.suffix}"):
            return lines
        return [f"get_ipython().run_cell_magic({'px' + self.suffix!r}, '', {code!r})\n"]

    def _run(self, code: str, targets, block: bool, stream: bool) -> AsyncResult:
        chunks: queue.SimpleQueue = queue.SimpleQueue()
        ar = self.view.execute(code, targets=targets, block=False, silent=False, stream=stream and block)
        ar.add_output_callback(lambda *chunk: chunks.put(chunk))
        self.last_result = ar
        if block:
            self._show(ar, chunks if stream else None)
        return ar

    def _show(self, ar: AsyncResult, chunks: queue.SimpleQueue | None) -> None:
        """Wait for the replies (Ctrl-C interrupts the engines) and print them: with
        ``chunks``, each engine's lines as it prints them; raise the engines' errors
        after their outputs."""
        try:
            if chunks is not None:
                self._stream(ar, chunks)
            else:
                ar.wait()
                for index in range(len(ar.msg_ids)):
                    show_reply(ar, index)
        except KeyboardInterrupt:
            ar.abort(interrupt=True)
            raise
        ar.get(0)

    @staticmethod
    def _stream(ar: AsyncResult, chunks: queue.SimpleQueue) -> None:
        """Print lines as they come, then each engine's rest and value once it is done."""
        shown: dict[int, dict[str, int]] = {}
        done: set[int] = set()

        def drain(block: bool) -> None:
            while True:
                try:
                    index, engine, name, text = chunks.get(timeout=0.05) if block else chunks.get_nowait()
                except queue.Empty:
                    return
                block = False
                show_lines(engine, name, text)
                counts = shown.setdefault(index, {})
                counts[name] = counts.get(name, 0) + len(text)

        while len(done) < len(ar.msg_ids):
            drain(block=True)
            for index in [i for i, reply in enumerate(ar._replies) if reply is not None and i not in done]:
                drain(block=False)  # what it printed before its reply came
                show_reply(ar, index, shown.get(index))
                done.add(index)


#: The magics without a suffix, as last registered (their client may be closed since).
_default: ParallelMagics | None = None


def activate(view, suffix: str = "") -> ParallelMagics:
    """Register the magics for ``view`` in the running IPython."""
    global _default
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("activate() registers IPython magics: run it inside IPython or Jupyter")
    magics = ParallelMagics(shell, view, suffix)
    shell.register_magics(magics)
    if not suffix:
        _default = magics
    return magics


def activate_if_in_ipython(client) -> None:
    """Give IPython ``%px`` on all of ``client``'s engines, unless an open client's
    magics are there already (so the first Client made inside IPython activates)."""
    from IPython import get_ipython

    if get_ipython() is not None and (_default is None or _default.view.client.closed):
        activate(client.direct_view("all"))
