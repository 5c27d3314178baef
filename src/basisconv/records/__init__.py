"""What a run or a benchmark writes about itself, in five parts: where it comes from
(:mod:`.origin`: commit, machine, versions, command), how its files are written
(:mod:`.files`: folders, locks, atomic writes), the run record (:mod:`.runs`: one type for
every producer, and publishing it), what the analysis reads of a record and its checks
(:mod:`.schema`) and the protocol's collection of records (:mod:`.protocol`; what a start
does about unusable or stale ones, :mod:`.protocol_checks`), with the log of its sessions
(:mod:`.sessions`) and the check that no git merge was left unfinished in its results
(:mod:`.unmerged`).

Producers write records here; ``basisconv.analysis`` reads them back and never needs the
producers themselves. Everything is importable from ``basisconv.records``."""

from .origin import (git_commit, hardware, timing_hardware, TF32_FLAGS, tf32_name,
                     measured_on_cpu,
                     device_name, commit_name,
                     hardware_name, threads_name, package_versions, timestamp, this_command,
                     HYDRA_VALUE_FLAGS, script_command,
                     provenance, wandb_provenance, provenance_from_wandb)
from .files import (json_digest, file_digest, LOCK, make_folder, folder_lock, temporary_beside,
                    leftover_temporaries, STALE_AFTER_S, write_atomic, write_bytes_atomic,
                    write_text_atomic, json_text, finite_or_null, write_json_atomic,
                    restore_hint)
from .runs import (RECORD, KINDS, DIVERGED_STATUS, RunRecord, write_record, read_record,
                   read_benchmark_record, recorded_table, is_recorded_table,
                   unwritable_folder, publish, refuse_other_kind, KIND_WORDS, precision_name,
                   amp_of_precision)
from .schema import (REQUIRED, MEASURED, LISTS, CONFIG_TYPES, PROVENANCE_TYPES, is_measurement,
                     of_type, missing_fields, ABSENT, field_at)
from .protocol import (PROTOCOL_ROWS, PROTOCOL_RECORDS, SEED_FILE, missing_protocol_runs,
                       protocol_slot, misplaced, search_table_found, unusable)
from .protocol_checks import (made_by_profile, set_aside_foreign_records, set_aside, table_key,
                              set_aside_stale_records, set_aside_run_folder,
                              set_aside_runs_of_other_tables, set_aside_unpublished_runs,
                              runs_to_make)
from .sessions import SESSIONS, has_session_log, log_session, read_sessions
from .unmerged import unmerged_files, unmerged_problem

__all__ = ["git_commit", "hardware", "timing_hardware", "TF32_FLAGS", "tf32_name",
           "measured_on_cpu",
           "device_name", "commit_name",
           "hardware_name", "threads_name", "package_versions", "timestamp", "this_command",
           "HYDRA_VALUE_FLAGS",
           "script_command",
           "provenance", "wandb_provenance", "provenance_from_wandb", "json_digest", "file_digest",
           "LOCK", "make_folder", "folder_lock", "temporary_beside", "leftover_temporaries",
           "STALE_AFTER_S",
           "write_atomic", "write_bytes_atomic", "write_text_atomic", "json_text", "finite_or_null",
           "write_json_atomic", "restore_hint", "RECORD", "KINDS", "DIVERGED_STATUS",
           "RunRecord", "write_record",
           "read_record", "read_benchmark_record", "recorded_table", "is_recorded_table",
           "REQUIRED", "MEASURED", "LISTS", "CONFIG_TYPES", "PROVENANCE_TYPES", "is_measurement",
           "of_type",
           "missing_fields", "unwritable_folder", "publish", "refuse_other_kind", "KIND_WORDS",
           "precision_name", "amp_of_precision", "ABSENT", "field_at",
           "PROTOCOL_ROWS", "PROTOCOL_RECORDS",
           "SEED_FILE", "missing_protocol_runs", "protocol_slot", "misplaced",
           "search_table_found", "unusable", "made_by_profile", "set_aside_foreign_records",
           "set_aside", "table_key", "set_aside_stale_records", "set_aside_run_folder",
           "set_aside_runs_of_other_tables", "set_aside_unpublished_runs", "runs_to_make",
           "SESSIONS", "has_session_log", "log_session", "read_sessions", "unmerged_files",
           "unmerged_problem"]
