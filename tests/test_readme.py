"""The README's code and provenance hold: its Python examples run against the package, and
the commit it names for the quick tables is the one their ``index.json`` records (both were
found out of date in review)."""

import json
import re

import torch
import torch.nn as nn

from basisconv.models import build_model


def python_blocks(repo) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (repo / "README.md").read_text(), re.S)


def names_the_reader_supplies():
    """What the README's examples leave to the reader: a trained conv, a model, and the
    evaluate / finetune functions of the own-model sensitivity estimate (tiny here)."""
    model = build_model("resnet8")
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            logits = m(images)
        return {"accuracy": (logits.argmax(1) == labels).float().mean().item(),
                "loss": nn.functional.cross_entropy(logits, labels).item()}

    def finetune(m):
        m.train()
        optimizer = torch.optim.SGD(m.parameters(), lr=0.01)
        loss = nn.functional.cross_entropy(m(images), labels)
        loss.backward()
        optimizer.step()

    return {"trained_conv": nn.Conv2d(64, 128, 3, padding=1), "model": model,
            "evaluate": evaluate, "finetune": finetune}


def test_the_readmes_python_examples_run(repo):
    blocks = python_blocks(repo)
    assert len(blocks) >= 2
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for block in blocks:
            namespace = names_the_reader_supplies()
            exec(compile(block, "README.md", "exec"), namespace)


def test_the_example_supplies_are_what_the_examples_need(repo):
    # the supplied names are used by the examples, so dropping one fails the test above
    text = "".join(python_blocks(repo))
    for name in names_the_reader_supplies():
        assert re.search(rf"\b{name}\b", text), name


def test_the_readme_names_the_commit_that_last_rebuilt_the_quick_tables(repo):
    stated = re.search(r"last by `make analyze PROFILE=quick` .*?at commit `([0-9a-f]{7,})`",
                       (repo / "README.md").read_text(), re.S)
    assert stated, "the README no longer says which commit rebuilt results/quick"
    index = json.loads((repo / "results" / "quick" / "index.json").read_text())
    assert index["provenance"]["git"]["commit"].startswith(stated.group(1))


def test_the_comparison_with_the_paper_cites_the_gpu_records_it_judges_by(repo):
    """Found in review: the speed claim was called shown by the CPU benchmark alone, while
    the committed GPU records show the basis model slower there. Every record file the
    comparison cites exists, and each GPU step ratio it quotes is the records'."""
    readme = (repo / "README.md").read_text()
    beside = readme.split("**Beside the paper.**")[1].split("\n## ")[0]
    cited = re.findall(r"`(results/[^`*]+(?:\*[^`]*)?)`", beside)
    assert any("gpu-h200" in path for path in cited)
    for path in cited:
        assert list(repo.glob(path)), path

    def step(name):
        record = json.loads((repo / "results" / "gpu-h200" /
                             f"train-throughput-cuda-bf16{name}.json").read_text())
        return record["seconds_per_step"]
    ratios = [step(f"-basis{size}{graphs}") / step(graphs)
              for graphs in ("", "-graphs") for size in ("0.25", "0.5")]
    quoted = re.search(r"takes ([\d.]+)x \(1/4\) and ([\d.]+)x \(1/2\) the\s+dense step's time "
                       r"eager, and ([\d.]+)x and ([\d.]+)x with CUDA graphs", beside)
    assert quoted and [float(x) for x in quoted.groups()] == [round(r, 2) for r in ratios]


def test_the_readme_says_where_its_python_commands_run(repo):
    """Found in review: after the two set-up commands, the README's ``python scripts/...``
    lines ran the system Python, which has none of the packages (the Makefile's ``.venv``
    was never named), before they are first given."""
    text = (repo / "README.md").read_text()
    first = min(text.index(f"```bash\n{command}") for command in ("python scripts/", "pytest")
                if f"```bash\n{command}" in text)
    assert "source .venv/bin/activate" in text[:first]
