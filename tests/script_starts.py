"""Many command lines of one script, each in a process of its own as a user's would be,
but with one start-up between them: a process imports the script's modules once and forks
a child per command line, which runs the script as ``__main__`` (its module-level code
too) and exits with the script's status. A start imports torch, Hydra and the package
(2 s of CPU each: a test of nine refused command lines spent 19 s on them)."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

DRIVER = r"""
import importlib, json, os, runpy, sys, tempfile, traceback
script, modules, cwd, lines = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
for module in modules:  # what every child would import first
    importlib.import_module(module)
results = []
for argv in lines:
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os.chdir(cwd)
            sys.argv = [script, *argv]
            sys.path[0] = os.path.dirname(script)  # as python <script> has it
            try:
                runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as stop:
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    texts = []
    for file in (out, err):
        file.seek(0)
        texts.append(file.read().decode())
    results.append([os.waitstatus_to_exitcode(status), *texts])
print(json.dumps(results))
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


def run_script_lines(script: Path, lines: list[list[str]], *, cwd: Path,
                     env: dict[str, str] | None = None,
                     timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``python <script> <line>`` for each of ``lines``, run in ``cwd``: each result's
    returncode, stdout and stderr as a process of its own gives them (the modules the
    script imports are imported once, before the forks)."""
    modules = imported_modules(script)
    # a session of its own, ended whole past ``timeout`` or on any error here: subprocess.run
    # kills the driver alone, and a line that hung (or trained, no longer refused) ran on in
    # its forked child, an orphan, after the test had failed
    with subprocess.Popen([sys.executable, "-c", DRIVER, str(script), json.dumps(modules),
                           str(cwd), json.dumps(lines)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=cwd,
                          start_new_session=True) as driver:
        try:
            stdout, stderr = driver.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
            raise
    assert driver.returncode == 0, stderr[-3000:]
    return [subprocess.CompletedProcess([sys.executable, str(script), *line], code, out, err)
            for line, (code, out, err) in zip(lines, json.loads(stdout))]
