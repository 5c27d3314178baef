"""The override that points a command at a run's folder again, for the messages that say
how to resume a stopped run or publish a finished one: Hydra's default folders are dated,
so the same command alone would start a new run elsewhere."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf


def in_sweep() -> bool:
    """Whether this is a job of a Hydra sweep (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def how_to_go_on(output_dir: Path, cfg: Any, saved_epochs: int, to: str = "resume it") -> str:
    """What a run that stopped should be given to go on: with no checkpoint kept, the same
    command (it starts over); with one, the same command pointed at its folder."""
    if saved_epochs == 0:
        return "the same command starts it over"
    return f"run the same command again with {folder_override(output_dir, cfg)} to {to}"


def folder_override(output_dir: Path, cfg: Any) -> str:
    """The override that points a command at the run in ``output_dir`` again (in a sweep,
    at its jobs' folders)."""
    if in_sweep():
        return sweep_folder_override(cfg)
    # pasted into a shell as it is
    return shell_word(f"hydra.run.dir={hydra_value(str(output_dir))}") + resume_flag(cfg)


def shell_word(word: str) -> str:
    """``word`` quoted for the shell: in double quotes where it holds Hydra's single quotes
    and nothing a shell expands there (``shlex.quote`` writes each ``'`` as ``'"'"'``)."""
    if "'" in word and not re.search(r'[$`"\\!]', word):
        return f'"{word}"'
    return shlex.quote(word)


def hydra_value(text: str) -> str:
    """``text`` as Hydra's override grammar reads it back: unquoted where it holds only
    the characters an unquoted value may (letters, digits, spaces, ``_-/\\+.$%*@?|:``,
    ``${...}``), else in single quotes. A folder named ``lr=0.1`` (or a sweep job's,
    ``basis.size=0.25,seed=0``) was printed bare, and the command that was to resume it
    failed to parse."""
    if re.fullmatch(r"(?:[\w /\\+.$%*@?|:-]|\$\{\w+\})*", text, flags=re.ASCII) and (
            text == text.strip()):
        return text
    # (in quotes a backslash escapes only a quote, or the backslashes before one)
    return "'" + re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + "\\" * len(m[2]) + m[2], text) + "'"


def sweep_folder_override(cfg: Any) -> str:
    """The override that sends this sweep (of run config ``cfg``), run again, to the folders
    its jobs ran in. Hydra's default folder, ``multirun/${name}/<date>``, resolves per job,
    so a sweep over a key its runs' ``name`` carries (``basis.size`` with
    ``experiment=basis_all``) spreads over one folder per name; ``${name}`` kept with the
    sweep's date finds each job's own (a literal folder would send every job to one and
    train the others again). Quoted for the shell, which would expand ``${name}``."""
    hydra_cfg = HydraConfig.get()
    sweep = Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir)  # from wherever it is run
    name = run_name(cfg)
    if name and sweep.parent.name == name:
        sweep = sweep.parent.parent / "${name}" / sweep.name
    return shell_word(f"hydra.sweep.dir={hydra_value(str(sweep))}") + resume_flag(cfg)


def resume_flag(cfg: Any) -> str:
    """`` trainer.resume=true`` for a run started with ``trainer.resume=false``: else its
    stop says that the same command with its folder resumes it, and that command trains
    it over from epoch 1 (a sweep's finished jobs too)."""
    try:
        resume = OmegaConf.select(cfg, "trainer.resume", default=True)
    except Exception:  # noqa: BLE001 - a config that does not resolve says nothing of it
        resume = True
    return "" if resume in (True, None) else " trainer.resume=true"


def run_name(cfg: Any) -> str | None:
    """``cfg.name``, or None where it is not there or does not resolve (``name=${typo}``)."""
    try:
        return OmegaConf.select(cfg, "name", default=None)
    except Exception:  # noqa: BLE001 - the error being reported is what matters
        return None
