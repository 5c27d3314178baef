"""Many command lines of one script, each in a process of its own as a user's would be,
but with one start-up between them: a process imports the script's modules once and forks
a child per command line, which runs the script as ``__main__`` (its module-level code
too) and exits with the script's status; its output is read as ``subprocess.run`` reads
it, until every process holding it (one the script started and left running) has closed
it. A start imports torch, Hydra and the package (2 s of CPU each: a test of nine refused
command lines spent 19 s on them).

The importing process (a server) stays for the next command line of the same script and
environment: tests of one refused command line each share it through the session fixture
``script_starts`` (tests/conftest.py). Its environment is the one the modules were
imported in (but for pytest's PYTEST_CURRENT_TEST, which names each test: each child has
the whole environment of its test), so a test whose environment differs gets a server of
its own, and only the last few servers are kept (each holds torch); a test of what
happens at import time, of signals, or of locks between processes starts a real process."""

from __future__ import annotations

import ast
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

KEPT_SERVERS = 3  # (a script's for each of a few environments: about 400 MB each)

SERVER = r"""
import atexit, importlib, json, os, runpy, select, sys, tempfile, traceback
script, modules = sys.argv[1], json.loads(sys.argv[2])
sys.path[0] = os.path.dirname(script)  # as python <script> has it
answers = os.fdopen(os.dup(1), "w")  # (fd 1 itself the server's log, below)
log = os.dup(2)
# what the imports say (a warning, a print) every real start says: each child's output
# begins with it, and a print does not end up in the answers
said = tempfile.TemporaryFile(), tempfile.TemporaryFile()
os.dup2(said[0].fileno(), 1)
os.dup2(said[1].fileno(), 2)
try:
    for module in modules:  # what every child would import first
        importlib.import_module(module)
finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
for file in said:
    file.seek(0)
said = [file.read() for file in said]
for request in sys.stdin:
    argv, cwd, env = json.loads(request)
    # pipes, read until every process holding them has closed them, as subprocess.run reads
    # a real start's: a process the line started and left running is waited for (and what
    # it says is the line's), not left writing after the answer
    (out, out_end), (err, err_end) = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # (subprocess.run's input: none)
            os.dup2(out_end, 1)
            os.dup2(err_end, 2)
            for fd in (out, out_end, err, err_end):
                os.close(fd)
            for fd, text in zip((1, 2), said):
                with open(fd, "wb", closefd=False) as file:
                    file.write(text)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = [script, *argv]
            try:
                runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as stop:
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
            except BaseException as error:
                # from the script's own frame on, as python <script> shows it: not this
                # server's and runpy's frames above it
                frames = error.__traceback__
                while frames is not None and frames.tb_frame.f_code.co_filename != script:
                    frames = frames.tb_next
                traceback.print_exception(type(error), error, frames)
            atexit._run_exitfuncs()  # as an interpreter's exit runs them (os._exit does not)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_end)
    os.close(err_end)
    said_here, open_ends = {out: [], err: []}, [out, err]
    while open_ends:
        for fd in select.select(open_ends, [], [])[0]:
            if chunk := os.read(fd, 1 << 16):
                said_here[fd].append(chunk)
            else:  # (closed by every process that held it)
                open_ends.remove(fd)
                os.close(fd)
    _, status = os.waitpid(pid, 0)
    texts = [b"".join(said_here[fd]).decode(errors="replace") for fd in (out, err)]
    answers.write(json.dumps([os.waitstatus_to_exitcode(status), *texts]) + "\n")
    answers.flush()
"""


def imported_modules(script: Path) -> list[str]:
    """The modules the script's top level imports, in its order."""
    modules = []
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.append(node.module)
    return modules


class ScriptStarts:
    """``run(script, line, cwd=..., env=...)``: ``python <script> <line>`` as
    ``subprocess.run(..., capture_output=True, text=True)`` gives it, forked from a server
    per script and environment, started at its first command line."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, str], subprocess.Popen] = {}  # the oldest first

    def run(self, script: Path, line: list[str], *, cwd: Path,
            env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ if env is None else env)
        key = (str(script), json.dumps({name: value for name, value in env.items()
                                        if name != "PYTEST_CURRENT_TEST"}, sort_keys=True))
        if key in self.servers and self.servers[key].poll() is not None:
            self.stop(key)  # (ended since its last line, killed: out of memory)
        if key in self.servers:
            self.servers[key] = self.servers.pop(key)  # (the newest now)
        else:
            if len(self.servers) == KEPT_SERVERS:
                self.stop(next(iter(self.servers)))
            log = tempfile.TemporaryFile()  # (what the server itself says: an import error)
            self.servers[key] = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(script),
                 json.dumps(imported_modules(script))], env=env, cwd=cwd,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                start_new_session=True)  # (a timeout stops the server and its child)
            self.servers[key].log = log
        server = self.servers[key]
        try:
            server.stdin.write(json.dumps([line, str(cwd), env]) + "\n")
            server.stdin.flush()
            if not select.select([server.stdout], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired([str(script), *line], timeout)
            answer = server.stdout.readline()
        except BaseException:
            # (pytest-timeout's signal, an interrupt: the line's answer, still to come,
            # would be the next line's)
            self.stop(key)
            raise
        if not answer:  # the server itself failed (an import)
            server.log.seek(0)
            said = server.log.read().decode(errors="replace")[-3000:]
            self.stop(key)
            raise AssertionError(f"the server of {script} ended (status {server.returncode}): "
                                 f"{said}")
        code, out, err = json.loads(answer)
        return subprocess.CompletedProcess([sys.executable, str(script), *line], code, out, err)

    def stop(self, key: tuple[str, str]) -> None:
        server = self.servers.pop(key)
        with server.stdout, server.log:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            try:
                server.stdin.close()
            except BrokenPipeError:  # (a line it died reading, left unsent: no one reads it)
                pass

    def close(self) -> None:
        for key in list(self.servers):
            self.stop(key)

