import copy
import importlib.util
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests never talk to wandb's servers.
os.environ.setdefault("WANDB_MODE", "disabled")
# PYTHONPATH's entries as absolute paths: the tests start runs in their own folders, where a
# relative entry (docs/gpu.md's PYTHONPATH=/tmp/site:src on a GPU machine without the
# package installed) names nothing, and every such run failed with "No module named
# 'basisconv'" (found in review: the killed-run test's 300 s wait in the second GPU slot)
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(entry) if entry else entry
        for entry in os.environ["PYTHONPATH"].split(os.pathsep))
# The tests' own repositories commit unsigned whatever the user's git config says (found in
# review: with commit.gpgsign=true in ~/.gitconfig, seven tests failed at their commit);
# git 2.31+'s config from the environment, which older gits ignore
if "GIT_CONFIG_COUNT" not in os.environ:
    os.environ.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="commit.gpgsign",
                      GIT_CONFIG_VALUE_0="false")
sys.path.insert(0, str(Path(__file__).parent))
# At most 2 threads a test process; the workers of `make test` (pytest-xdist) share them,
# so that two workers on two cores do not each run two threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // _WORKERS))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")  # a constant: module fixtures take it too
def repo() -> Path:
    return REPO


@pytest.fixture
def load_script():
    """``load_script("gpu_check")``: ``scripts/gpu_check.py`` as a module, to call its
    functions or its ``main`` in-process (the autouse fixture below puts back what a script
    changes, such as ``sys.path``)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def script_starts():
    """``script_starts.run(script, line, cwd=..., env=...)``: ``python <script> <line>``,
    forked from one process per script and environment that imported the script's modules
    (tests/script_starts.py): a refused command line is a fraction of a second, not the 2 s
    of CPU of a start that imports torch and Hydra."""
    from script_starts import ScriptStarts

    starts = ScriptStarts()
    yield starts
    starts.close()


def pytest_addoption(parser):
    group = parser.getgroup("basisconv")
    group.addoption("--reverse-order", action="store_true",
                    help="run the collected tests in reverse order (checks that no test "
                         "depends on global state left by an earlier one)")
    group.addoption("--learning-seeds", default="0",
                    help="comma-separated seeds for test_training_learns_a_small_real_problem "
                         "(default 0), e.g. --learning-seeds=0,1,2,3,4 to check its margin")
    group.addoption("--device", default="cpu",
                    help="device for the tests marked `device` (cpu or cuda; make gpu-check "
                         "runs them with --device cuda -m device)")


def pytest_generate_tests(metafunc):
    if "learning_seed" in metafunc.fixturenames:
        seeds = [int(s) for s in metafunc.config.getoption("learning_seeds").split(",")]
        metafunc.parametrize("learning_seed", seeds, ids=[f"seed{s}" for s in seeds])


@pytest.hookimpl(trylast=True)  # after any other reordering (e.g. pytest-random-order)
def pytest_collection_modifyitems(config, items):
    if config.getoption("reverse_order"):
        items.reverse()


# ------------------------------------------------ process-global torch, RNG and env state
# In-process training (basisconv.train.fit, probe.Probe) sets the thread count, the
# deterministic-algorithm flags and cudnn flags and seeds the global generators, and does not
# put them back; tests seed and change the global RNGs too. A later test would then run with
# what an earlier one left (e.g. test_selection's trainer.threads=1 made the learning test in
# test_train run on one thread instead of two: other arithmetic, another result), so the
# outcome depended on which tests ran before it. Every test therefore starts from the state
# the session started with, and leaves it so.

# The seed the CUDA generators are set back to after each test where CUDA starts within the
# session: torch's own seed of this process (nothing has seeded it as this file is imported;
# any fixed seed would do: what matters is that each test starts from the same state).
_UNSEEDED = torch.initial_seed()


def _global_state() -> dict:
    state = {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "default_dtype": torch.get_default_dtype(),
        "default_device": torch.get_default_device(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "grad_enabled": torch.is_grad_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "environ": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
        # e.g. a script run in-process (tests/test_environment.py loads scripts/gpu_check.py,
        # which puts the repository's src/ first on the path, for good)
        "sys_path": list(sys.path),
        # torch.distributed.init_process_group wraps sys.excepthook in one that prefixes
        # "[rank0]: " to every line, and destroy_process_group does not unwrap it: each
        # test that joined a gloo group of one in-process added one more prefix to what an
        # uncaught exception prints for the rest of the process (found by an audit)
        "excepthook": sys.excepthook,
        # torch.compile's graph limits, raised by whatever compiles in-process outside a
        # producer (a timing.Runner(compile=True) keeps them raised for the process: found
        # in random order, where a later test counting recompiles saw the raised limit)
        "compile_limits": _compile_limits(),
        # a training run as a torchrun rank other than 0 (RANK set in-process) quiets the
        # package's logger for the rest of its process: a later test's log check saw nothing
        "package_log_level": logging.getLogger("basisconv").level,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _compile_limits() -> dict:
    import torch._dynamo as dynamo

    from basisconv.execution import COMPILE_LIMITS
    return {key: getattr(dynamo.config, key) for key in COMPILE_LIMITS}


def _compiled_frames() -> int:
    """How many frames torch.compile has compiled since it started or was last reset (0
    where nothing imported it)."""
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo.convert_frame.FRAME_COUNTER if dynamo is not None else 0


def _restore_global_state(state: dict) -> None:
    if torch.get_num_threads() != state["num_threads"]:
        torch.set_num_threads(state["num_threads"])
    if torch.get_num_interop_threads() != state["num_interop_threads"]:
        try:  # settable only before the first inter-op parallel work
            torch.set_num_interop_threads(state["num_interop_threads"])
        except RuntimeError:
            pass
    torch.set_default_dtype(state["default_dtype"])
    if torch.get_default_device() != state["default_device"]:
        # set_default_device("cpu") would install a device mode around every torch call
        device = state["default_device"]
        torch.set_default_device(None if device == torch.device("cpu") else device)
    torch.use_deterministic_algorithms(state["deterministic"],
                                       warn_only=state["deterministic_warn_only"])
    torch.utils.deterministic.fill_uninitialized_memory = state["fill_uninitialized_memory"]
    torch.backends.cudnn.enabled = state["cudnn_enabled"]
    torch.backends.cudnn.deterministic = state["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]
    torch.backends.cudnn.allow_tf32 = state["cudnn_allow_tf32"]
    torch.backends.mkldnn.enabled = state["mkldnn_enabled"]
    torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    torch.set_grad_enabled(state["grad_enabled"])
    torch.set_anomaly_enabled(state["anomaly"])
    torch.set_rng_state(state["torch_rng"])
    logging.getLogger("basisconv").setLevel(state["package_log_level"])
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])
    if "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        # CUDA started in a test, after the session's state was taken: its generators were
        # left as that test's seed and draws made them, and a later test's unseeded draws
        # on the GPU depended on which tests ran before it (found by an audit)
        torch.cuda.manual_seed_all(_UNSEEDED)
    if sys.path != state["sys_path"]:
        sys.path[:] = state["sys_path"]
    sys.excepthook = state["excepthook"]
    if _compile_limits() != state["compile_limits"]:
        import torch._dynamo as dynamo

        from basisconv import execution
        execution._limits_before = None  # what a later producer saves is then torch's own
        for key, value in state["compile_limits"].items():
            setattr(dynamo.config, key, value)
    if _compiled_frames():
        # What torch.compile compiled in a test that did not reset dynamo after it (found by
        # an audit: test_auto_form's compiled auto model): dynamo's frame count and its
        # records of compiled code, guard failures and graph breaks stayed, so a later test
        # that compiles started from them, not from a fresh process's dynamo.
        import torch._dynamo as dynamo

        dynamo.reset()
    environ = state["environ"]  # e.g. CUBLAS_WORKSPACE_CONFIG set by deterministic training
    for key in set(os.environ) - set(environ) - {"PYTEST_CURRENT_TEST"}:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@pytest.fixture(scope="session")
def _session_global_state() -> dict:
    return _global_state()


@pytest.fixture(autouse=True)
def _isolated_global_state(_session_global_state):
    """Each test starts from the session's initial global torch, RNG and environment state
    and cannot leak its own changes into later tests."""
    _restore_global_state(_session_global_state)
    yield
    _restore_global_state(_session_global_state)


@pytest.fixture(autouse=True)
def _entry_point_state_restored():
    """A script's ``main`` called in-process (``exit_on_user_error``) sets
    ``basisconv.cli``'s state and replaces four of Hydra's functions: put back, so that a
    later test of them does not depend on the order."""
    import hydra._internal.utils as hydra_utils
    import hydra.core.utils as hydra_core_utils

    from basisconv import cli

    saved = (cli.task_started, list(cli.failed_jobs), list(cli.resume_override),
             hydra_utils.run_and_report, cli.hydra_main_module._run_hydra,
             hydra_core_utils._save_config, hydra_core_utils.JobReturn.return_value)
    diverged = dict(cli.diverged_jobs)
    yield
    cli.diverged_jobs.clear()
    cli.diverged_jobs.update(diverged)
    (cli.task_started, cli.failed_jobs[:], cli.resume_override[:], hydra_utils.run_and_report,
     cli.hydra_main_module._run_hydra, hydra_core_utils._save_config,
     hydra_core_utils.JobReturn.return_value) = saved


# What the package remembers for the rest of the process: warnings said once
# (errors.SAID_ONCE, kernels.fused._WARNED, sensitivity_published.WARNED_MISSING), the tables
# being estimated again (sensitivity.RECOMPUTING), the shapes whose kernel failed to compile
# (fused._FAILED), combine="auto"'s timed choices (kernels.auto), a sweep's unused folders
# (sweep_checks.unused_sweep_folders) and the colours a user's policies and forms were
# given (analysis.figures, analysis.speed_summary). A test that filled one left it so for
# every later test: a later check that a path says nothing (warnings as errors) passed
# whatever that path said, if an earlier test had said it first.
_PROCESS_MEMORY = {"basisconv.errors": ("SAID_ONCE",),
                   "basisconv.sweep_checks": ("unused_sweep_folders",),
                   "basisconv.sensitivity": ("RECOMPUTING",),
                   "basisconv.sensitivity_published": ("WARNED_MISSING",),
                   "basisconv.kernels.fused": ("_WARNED", "_FAILED"),
                   "basisconv.kernels.auto": ("_CHOICES", "TIMINGS", "_LOOKED_UP"),
                   "basisconv.analysis.figures": ("_EXTRA_TAKEN",),
                   "basisconv.analysis.speed_summary": ("_FORMS_TAKEN",),
                   "basisconv.timing": ("ALLOCATOR_TUNED",)}


@pytest.fixture(autouse=True)
def _process_memory_restored():
    """Put back what the package remembers per process (above) as it was before the test
    (a module first imported by the test: empty, as on import)."""
    saved = {(module, name): copy.deepcopy(getattr(sys.modules[module], name))
             for module, names in _PROCESS_MEMORY.items() if module in sys.modules
             for name in names}
    yield
    for module, names in _PROCESS_MEMORY.items():
        for name in names if module in sys.modules else ():
            memory = getattr(sys.modules[module], name)
            memory.clear()
            memory.update(saved.get((module, name), ()))


@pytest.fixture(autouse=True)
def _wandb_session_ended():
    """wandb's process-wide session (``wandb.sdk.wandb_setup._singleton``), started in-process
    by a test (``wandb_setup.singleton()``, ``wandb.login``, ``wandb.init``), keeps the
    environment it started in: a later test in that worker that sets a ``WANDB_`` variable
    got wandb's "Changes to your `wandb` environment variables will be ignored" warning, and
    the test that an offline run starts without a warning failed after the login test of
    tests/test_run_folder.py (found in random order, seed 9001). A session the test started
    is ended after it."""
    def session():
        setup = sys.modules.get("wandb.sdk.wandb_setup")
        return getattr(setup, "_singleton", None)

    before = session()
    yield
    if session() is not None and session() is not before:
        import wandb

        wandb.teardown()


@pytest.fixture
def device(request) -> torch.device:
    """The device the `device`-marked tests run on (``--device``, default cpu)."""
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("--device cuda but no CUDA device is available", pytrace=False)
    return device


@pytest.fixture
def triton_backend(device, monkeypatch):
    """Triton kernels through the interpreter on CPU; on CUDA compiled, in full float32
    precision, with one tile (no autotuning: correctness, not speed, and fewer
    compilations). The environment and the precision flags are restored after."""
    if device.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setenv("BASISCONV_AUTOTUNE", "0")
        torch.backends.cudnn.allow_tf32 = False  # (restored by this file's state fixture)
        torch.set_float32_matmul_precision("highest")
