"""README.md's shell commands work: every ```bash block is either run here (offline, seconds, from a fresh clone
with .venv: it may use only files the repository holds) and must exit 0, or listed below as not run, with the
reason. A new block that is neither fails, and so does a listed block that is gone."""
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# The start of a block's first line -> nothing: the block runs here
RUN = (
    ".venv/bin/deepres --help",
    ".venv/bin/deepres models --filter",
    "export $(.venv/bin/python -c",
)
# The start of a block's first line -> why the block is not run here
NOT_RUN = {
    "make demo": "sets up .venv, installs Fashion-MNIST and trains for minutes; `make test` runs this suite",
    ".venv/bin/deepres data get fashion-mnist": "downloads Fashion-MNIST (or needs Debian's copy); the other lines need "
                                                "ImageNet or write 60,000 scenes",
    ".venv/bin/deepres train fashion_mnist/resnet20 ": "trains for minutes; CIFAR-10 under $HOME/data; resumes a run",
    ".venv/bin/deepres eval runs/fashion_mnist-resnet20": "needs a trained run, and ImageNet",
    ".venv/bin/deepres data make fashion-mnist-scenes": "needs Fashion-MNIST, writes 60,000 scenes (~1 min), then "
                                                        "trains",
    ".venv/bin/deepres eval runs/voc-deeplabv3_resnet50": "needs trained VOC / Cityscapes runs and ademxapp's .params",
    ".venv/bin/deepres teacher-logits": "needs a trained teacher run, then trains",
    ".venv/bin/deepres study assemble_tricks": "trains 16 runs",
    ".venv/bin/deepres robustness runs/my-run": "needs trained runs, ImageNet and ImageNet-C",
    ".venv/bin/deepres train fashion_mnist/resnet20_classes0to4": "trains for minutes",
    ".venv/bin/deepres study block_variants --set data.root=$HOME/cifar": (
        "trains (CIFAR-10, Fashion-MNIST); its --dry-run line needs Fashion-MNIST at data.root's default location, "
        "which a fresh clone lacks (the dry run then marks MISSING data.root and exits 2: test_what_ran.py)"),
    ".venv/bin/deepres study block_variants --data fashion_mnist --budget cpu --seeds 0,1,2 --out": "trains 12 runs",
    ".venv/bin/deepres predict examples/fashion_mnist/": "needs `make demo`'s run (runs/demo-XXXXXXXX-XXXXXX stands "
                                                         "for its name) and published weights",
    ".venv/bin/deepres serve": "a server that runs until stopped, on a trained run",
    "curl ": "needs a running `deepres serve`",
    ".venv/bin/deepres export runs/demo-XXXXXXXX-XXXXXX --format triton": "needs `make demo`'s run",
    ".venv/bin/deepres export runs/demo-XXXXXXXX-XXXXXX ": "needs `make demo`'s run; the benchmarks take minutes",
    ".venv/bin/torchrun --nproc-per-node 8": "8 GPUs and ImageNet",
    ".venv/bin/torchrun --nnodes 2": "2 nodes of 8 GPUs",
    "#!/bin/bash": "a Slurm batch script (2 nodes of 8 GPUs)",
    ".venv/bin/deepres data pack $HOME/imagenet": "needs ImageNet",
}


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, language, body) of every fenced block."""
    return [(text[:m.start()].count("\n") + 1, m.group(1), m.group(2))
            for m in re.finditer(r"^```([^\n]*)\n(.*?)^```$", text, re.M | re.S)]


BASH = [(line, body) for line, language, body in fenced_blocks(README.read_text()) if language == "bash"]


def marker(body: str) -> str | None:
    """The longest entry the block's first line starts with."""
    first = body.splitlines()[0]
    return max((m for m in (*RUN, *NOT_RUN) if first.startswith(m)), key=len, default=None)


def test_every_fence_names_its_language_and_every_bash_block_is_run_or_listed():
    """A bare ``` could hide a command from this test; each bash block matches an entry (its longest), and each
    entry exactly one block (an entry whose block is gone is stale)."""
    bare = [line for line, language, _ in fenced_blocks(README.read_text()) if not language]
    assert not bare, f"README.md: fenced blocks without a language at lines {bare}"
    unmatched = [f"line {line}: {body.splitlines()[0]!r}" for line, body in BASH if marker(body) is None]
    assert not unmatched, "add each block to RUN or NOT_RUN (with the reason):\n" + "\n".join(unmatched)
    used = [marker(body) for _, body in BASH]
    assert sorted(used) == sorted([*RUN, *NOT_RUN])


@pytest.mark.parametrize("line, body", [pytest.param(line, body, id=f"README.md:{line}")
                                        for line, body in BASH if marker(body) in RUN])
def test_readme_block_runs_offline_and_exits_0(line, body, tmp_path):
    """The block as written, in bash -e at the repository root, with an empty cache ($DEEPRES_CACHE) and home."""
    env = {**os.environ, "DEEPRES_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", body], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"README.md line {line}:\n{body}\nexit {done.returncode}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
