"""Tables from the local run records: ``python scripts/analyze.py [profile=quick]``.

Collects every complete training run under ``runs_dir`` (default ``outputs/<profile>/``)
and writes to ``out_dir`` (default ``results/<profile>/``): ``comparison.csv``,
``comparison.md`` (accuracy mean ± std over seeds, parameters, FLOPs, forward/backward
time per step, epoch time, speedup and accuracy change against the dense baseline) and
``comparison.json`` (provenance: command, commit, hardware, date, and the runs used).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from basisconv.analysis.runs import compare, comparison_markdown, load_runs
from basisconv.cli import exit_on_user_error
from basisconv.errors import ConfigError
from basisconv.records import provenance, write_json_atomic, write_text_atomic


@hydra.main(version_base="1.3", config_path="../configs", config_name="analyze")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    runs = load_runs(cfg.runs_dir)
    if runs.empty:
        raise ConfigError(f"no complete run record (run.json) under {cfg.runs_dir}; train some "
                          f"runs first, or point runs_dir at them")
    out = Path(cfg.out_dir)
    table = compare(runs)
    prov = provenance("python scripts/analyze.py " + " ".join(sys.argv[1:]))
    note = (f"\nFrom {len(runs)} runs under `{cfg.runs_dir}` (commits "
            f"{', '.join(sorted({str(c)[:7] for c in runs['commit']}))}; hardware "
            f"{', '.join(sorted(set(runs['hardware'].astype(str))))}); table made "
            f"{prov['date']} by `{prov['command']}`.\n")
    write_text_atomic(out / "comparison.csv", table.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / "comparison.md", comparison_markdown(table) + note)
    write_json_atomic(out / "comparison.json", {"provenance": prov, "runs": runs.to_dict("records")})
    print(comparison_markdown(table) + note)


if __name__ == "__main__":
    main()
