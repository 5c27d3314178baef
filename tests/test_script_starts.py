"""tests/script_starts.py, the helper that runs command lines of a script forked from one
start-up: a line that does not end is ended with it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from script_starts import ScriptStarts


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, which no one reaped, has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_line_that_hangs_past_the_timeout_is_ended_not_left_running(tmp_path):
    """A line that hangs (or trains, once a regression stops refusing it) must not run on,
    an orphan, after the test failed: found in review of the helper's first form, whose
    timeout killed its own process alone and left the forked child running."""
    script = tmp_path / "hangs.py"
    script.write_text("import os, sys, time\n"
                      "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
                      "time.sleep(120)\n")
    pid_file = tmp_path / "pid"
    starts = ScriptStarts()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            starts.run(script, [str(pid_file)], cwd=tmp_path, timeout=3)
    finally:
        starts.close()
    pid = int(pid_file.read_text())
    try:
        for _ in range(50):  # (SIGKILL is delivered at once; its parent reaps it)
            if not running(pid):
                break
            time.sleep(0.1)
        assert not running(pid), f"the line's process {pid} still runs"
    finally:
        if running(pid):  # (this test leaves nothing behind, failed or not)
            os.kill(pid, signal.SIGKILL)


def test_a_line_interrupted_mid_answer_leaves_no_answer_for_the_next_line(tmp_path,
                                                                         monkeypatch):
    """Found in review: an error while a line ran (pytest-timeout's signal, a KeyboardInterrupt)
    left its server running, and the next line of that script and environment, another
    test's, was given the interrupted line's answer."""
    import script_starts

    script = tmp_path / "says.py"
    script.write_text("import sys, time\ntime.sleep(float(sys.argv[1]))\nprint(sys.argv[2])\n")
    starts = ScriptStarts()
    waiting = script_starts.select.select

    def interrupted(*args):
        monkeypatch.setattr(script_starts.select, "select", waiting)
        raise KeyboardInterrupt

    monkeypatch.setattr(script_starts.select, "select", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            starts.run(script, ["1", "first"], cwd=tmp_path)
        assert starts.run(script, ["0", "second"], cwd=tmp_path).stdout == "second\n"
    finally:
        starts.close()


def killed_after_one_line(tmp_path):
    """A ``ScriptStarts`` whose one server, for a script that says its argument, answered
    a line and was then killed (SIGKILL: out of memory); the starts, the script and the
    dead server's process."""
    script = tmp_path / "says.py"
    script.write_text("import sys\nprint(sys.argv[1])\n")
    starts = ScriptStarts()
    try:
        assert starts.run(script, ["first"], cwd=tmp_path).stdout == "first\n"
        (server,) = starts.servers.values()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except BaseException:
        starts.close()
        raise
    return starts, script, server


def test_a_server_that_ended_between_lines_is_started_again(tmp_path):
    """A server killed between two lines (out of memory) was written to again: every later
    line of its script and environment failed with BrokenPipeError."""
    starts, script, server = killed_after_one_line(tmp_path)
    try:
        assert starts.run(script, ["second"], cwd=tmp_path).stdout == "second\n"
    finally:
        starts.close()


def test_what_the_imports_say_is_in_every_lines_output(tmp_path):
    """As a real start says it: a warning or print of an imported module went to the
    server's own log, so a test that a refused line is one line of stderr passed even when
    every real start said more."""
    (tmp_path / "noisy.py").write_text(
        "import sys, warnings\nprint('imported')\nwarnings.warn('at import')\n"
        "print('imported too', file=sys.stderr)\n")
    script = tmp_path / "quiet.py"
    script.write_text("import noisy\nprint('ran')\n")
    real = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path)
    starts = ScriptStarts()
    try:
        for _ in range(2):
            forked = starts.run(script, [], cwd=tmp_path)
            assert (forked.stdout, forked.stderr) == (real.stdout, real.stderr)
    finally:
        starts.close()


def test_a_line_that_fails_says_what_a_real_start_says(tmp_path):
    """Its traceback from the script's own frame on: a forked line's began with the
    server's and runpy's frames, which a test's assertion message showed as the script's."""
    script = tmp_path / "fails.py"
    script.write_text("def fails():\n    raise RuntimeError('why')\nfails()\n")
    real = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    starts = ScriptStarts()
    try:
        forked = starts.run(script, [], cwd=tmp_path, timeout=60)
    finally:
        starts.close()
    assert (forked.returncode, forked.stdout, forked.stderr) == (1, "", real.stderr)


def test_what_a_lines_own_child_process_says_after_it_ended_is_in_its_output(tmp_path):
    """As ``subprocess.run`` reads a real start's output until every process holding it
    has closed it: a process the line started and left running wrote its words after the
    line's answer (lost, and the process ran on into later tests)."""
    script = tmp_path / "leaves.py"
    script.write_text("import subprocess, sys\nprint('first', flush=True)\n"
                      "subprocess.Popen([sys.executable, '-c', "
                      "'import time; time.sleep(1); print(\"late\")'])\n")
    real = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert real.stdout == "first\nlate\n"
    starts = ScriptStarts()
    try:
        forked = starts.run(script, [], cwd=tmp_path, timeout=60)
    finally:
        starts.close()
    assert (forked.returncode, forked.stdout, forked.stderr) == (0, real.stdout, real.stderr)


def test_a_server_that_died_as_a_line_was_written_to_it_is_stopped_without_an_error(
        tmp_path):
    """Its pipe held the unsent rest of the line: closing it to stop the server raised
    BrokenPipeError (out of ``close`` at the session's end, the other servers left)."""
    starts, _, server = killed_after_one_line(tmp_path)
    try:
        server.stdin.write("[] \n")  # (buffered: the line it died reading)
    finally:
        starts.close()
    assert starts.servers == {} and server.stdin.closed
