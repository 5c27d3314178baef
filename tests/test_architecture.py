"""The package's structure, checked: imports run one way (the layers of ``.importlinter``),
and no module imports another of the package inside a function (the usual way to dodge
an import cycle, which would hide a dependency that runs the wrong way)."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "basisconv"


def test_imports_follow_the_layer_contract(repo, tmp_path):
    lint = Path(sys.executable).with_name("lint-imports")
    # (its cache in tmp_path: by default it writes .import_linter_cache/ into the checkout)
    result = subprocess.run([str(lint), "--config", str(repo / ".importlinter"),
                             "--cache-dir", str(tmp_path / "import_linter_cache")], cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_module_has_a_place_in_the_layers(repo):
    """A module the contract does not name is free to import anything, unchecked."""
    import re

    listed = set(re.findall(r"basisconv\.(\w+)", (repo / ".importlinter").read_text()))
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules | packages <= listed


def test_the_readmes_layout_lists_the_modules_in_the_contracts_order(repo):
    """The README's Layout says the package's imports run one way, top to bottom: found in
    the docs review, it listed ``cli``, ``unread`` and ``hydra_errors`` last and
    ``model_copy`` above ``layers``, the reverse of the contract. Every module the contract
    names is listed, each in a layer no higher than that of the module above it."""
    import re

    lines = [line.strip() for line in (repo / ".importlinter").read_text()
             .split("layers =", 1)[1].splitlines() if line.strip().startswith("basisconv.")]
    layer = {name.strip().removeprefix("basisconv."): i
             for i, line in enumerate(lines) for name in line.split("|")}
    layout = (repo / "README.md").read_text().split("## Layout", 1)[1]
    listed = re.findall(r"^  (\w+)(?:\.py|/)\s", layout, re.M)
    assert set(listed) == set(layer), set(listed) ^ set(layer)
    ranks = [layer[name] for name in listed]
    assert ranks == sorted(ranks), [n for n, r, below in zip(listed, ranks, ranks[1:])
                                    if below < r]


def local_package_imports(path: Path) -> list[str]:
    """``file:line`` of every import of this package made inside a function body."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and (
                    inner.level > 0 or (inner.module or "").startswith("basisconv")):
                found.append(f"{path.name}:{inner.lineno}")
            elif isinstance(inner, ast.Import) and any(
                    a.name.startswith("basisconv") for a in inner.names):
                found.append(f"{path.name}:{inner.lineno}")
    return found


def test_no_module_imports_the_package_inside_a_function():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in local_package_imports(path)]
    assert found == []


def test_the_local_import_check_finds_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from .train import fit\n    return fit\n")
    assert local_package_imports(sample) == ["sample.py:2"]
