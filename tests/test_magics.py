"""The IPython magics through a real ``InteractiveShell`` and a real cluster: ``%px``,
``%%px`` and its flags, ``%autopx``, ``%pxresult``, suffixes, and the automatic
activation by the first Client made inside IPython."""
from __future__ import annotations

import time

import pytest
from IPython.core.interactiveshell import InteractiveShell

import mpihub
from mpihub.client import magics

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shell():
    ipython = InteractiveShell.instance()
    yield ipython
    InteractiveShell.clear_instance()


@pytest.fixture
def px(rc, shell):
    """The shell with the magics on all of the module cluster's engines."""
    rc.activate()
    rc[:].execute("pass", block=True)
    return shell


def lines_of(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_px_runs_a_line_on_every_engine(px, rc, capsys):
    px.run_line_magic("px", "import os; print('pid', os.getpid())")
    out = capsys.readouterr().out
    pids = {e.pid for e in rc.engines.values()}
    assert sorted(lines_of(out, "[stdout:")) == sorted(f"[stdout:{e}] pid {rc.engines[e].pid}" for e in rc.ids)
    assert len(pids) == 2


def test_cell_px_shows_values_per_engine_and_honours_targets(px, capsys):
    px.run_cell_magic("px", "--targets 1", "x = 7\nx * 6")
    assert lines_of(capsys.readouterr().out, "Out[") == ["Out[1]: 42"]
    px.run_cell_magic("px", "-t 0:2", "import sys\nprint('warn', file=sys.stderr)\nx = 1")
    assert sorted(lines_of(capsys.readouterr().err, "[stderr:")) == ["[stderr:0] warn", "[stderr:1] warn"]


def test_noblock_returns_at_once_and_pxresult_shows_it_later(px, capsys):
    ar = px.run_cell_magic("px", "--noblock", "import time\ntime.sleep(0.5)\n'late'")
    assert isinstance(ar, mpihub.AsyncResult) and not ar.ready()
    assert capsys.readouterr().out == ""
    px.run_line_magic("pxresult", "")
    assert lines_of(capsys.readouterr().out, "Out[") == ["Out[0]: 'late'", "Out[1]: 'late'"]


def test_stream_shows_each_engine_when_it_finishes(px, capsys):
    px.run_cell_magic("px", "--stream", "import time\ntime.sleep(1.0 if __import__('os').getpid() % 2 else 0)\n"
                                        "print('done')")
    assert len(lines_of(capsys.readouterr().out, "[stdout:")) == 2


def test_local_runs_the_cell_here_too(px, rc):
    px.run_cell_magic("px", "--local", "both = 3")
    assert px.user_ns["both"] == 3 and rc[:].pull("both", block=True) == [3, 3]


def test_errors_show_per_engine_then_raise(px, capsys):
    with pytest.raises(mpihub.CompositeError):
        px.run_cell_magic("px", "", "1 / 0")
    assert sorted(lines_of(capsys.readouterr().err, "[")) == ["[0:execute] ZeroDivisionError: division by zero",
                                                             "[1:execute] ZeroDivisionError: division by zero"]


def test_autopx_runs_every_cell_on_the_engines_until_turned_off(px, rc, capsys):
    px.run_cell("%autopx")
    px.run_cell("remote_only = 11\nprint(remote_only)")
    px.run_cell("%autopx")
    out = capsys.readouterr().out
    assert sorted(lines_of(out, "[stdout:")) == ["[stdout:0] 11", "[stdout:1] 11"]
    assert "remote_only" not in px.user_ns and rc[:].pull("remote_only", block=True) == [11, 11]
    px.run_cell("here_only = 1")
    assert px.user_ns["here_only"] == 1


def test_a_suffix_gives_a_view_magics_of_its_own(px, rc, capsys):
    rc.activate(targets=[0], suffix="0")
    px.run_line_magic("px0", "print('only zero')")
    assert lines_of(capsys.readouterr().out, "[stdout:") == ["[stdout:0] only zero"]
    with pytest.raises(RuntimeError, match="no %px0 run"):
        magics.ParallelMagics(px, rc[0], "0").pxresult()


def test_the_first_client_inside_ipython_activates_px(shell, cluster, capsys):
    magics._default = None
    shell.magics_manager.magics["line"].pop("px", None)
    with mpihub.Client(cluster.cluster.client_file) as rc:
        assert "px" in shell.magics_manager.magics["line"] and magics._default.view.client is rc
        shell.run_line_magic("px", "print('auto')")
        assert len(lines_of(capsys.readouterr().out, "[stdout:")) == 2
    with mpihub.Client(cluster.cluster.client_file) as second:  # the first is closed: the next takes over
        assert magics._default.view.client is second


def test_activate_outside_ipython_says_so(rc, monkeypatch):
    monkeypatch.setattr("IPython.get_ipython", lambda: None)
    with pytest.raises(RuntimeError, match="inside IPython"):
        rc.activate()


def test_ctrl_c_during_a_blocking_run_interrupts_the_engines(px, monkeypatch):
    def interrupted(self, timeout=-1):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(mpihub.AsyncResult, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            px.run_cell_magic("px", "", "import time\ntime.sleep(30)")
    with pytest.raises(mpihub.CompositeError) as info:
        magics._default.last_result.get(15)  # long before the 30 s sleep would end
    assert all(isinstance(e, mpihub.TaskAborted) or e.ename == "KeyboardInterrupt" for e in info.value.elist), \
        info.value.elist


def test_stream_shows_lines_while_the_engines_still_run(px, rc, capsys, monkeypatch):
    seen: list[tuple[float, str]] = []
    printed = print

    def stamped(*args, **kwargs):
        seen.append((time.monotonic(), " ".join(map(str, args))))
        printed(*args, **kwargs)

    monkeypatch.setattr("builtins.print", stamped)
    px.run_cell_magic("px", "--stream", "import time\nprint('early')\ntime.sleep(1.5)\nprint('late')")
    when = {text: t for t, text in seen}
    assert sorted(lines_of(capsys.readouterr().out, "[stdout:")) == [
        "[stdout:0] early", "[stdout:0] late", "[stdout:1] early", "[stdout:1] late"]  # each line once
    assert when["[stdout:0] late"] - when["[stdout:0] early"] > 1.0  # shown while the engine slept


def test_execute_can_stream_to_a_callback(rc):
    arrived: list[tuple[float, int, str, str]] = []
    ar = rc[:].execute("import time\nprint('one')\ntime.sleep(1)\nprint('two')", block=False, stream=True)
    ar.add_output_callback(lambda index, engine, name, text: arrived.append((time.monotonic(), engine, name, text)))
    ar.get(20)
    done = time.monotonic()
    firsts = [t for t, _, name, text in arrived if text == "one\n" and name == "stdout"]
    assert len(firsts) == 2 and all(done - t > 0.5 for t in firsts)  # before the replies, not with them
    assert ar.stdout == ["one\ntwo\n", "one\ntwo\n"]
