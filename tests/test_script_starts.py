"""tests/script_starts.py, the helper that runs command lines of a script forked from one
start-up: a line that does not end is ended with it."""

import os
import signal
import subprocess
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
