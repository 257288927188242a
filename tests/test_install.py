"""The core install: sparse_tf imports, shows its help and trains on a CPU without the optional
packages (the extras [hf], [wandb], [analysis], [plot], and triton where it has no wheels), and says
which extra a feature needs in one line. Each case runs in a fresh interpreter in which those
packages cannot be imported (a meta-path finder that raises as a missing package does)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sparse_tf

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("wandb", "datasets", "transformers", "scipy", "matplotlib", "triton")

# Prepended to every command: after it, importing an optional package fails as if it were not
# installed (ModuleNotFoundError naming it; importlib.util.find_spec raises the same).
BLOCKER = f"""
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def run_without_extras(code: str, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sparse_tf_without_extras(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`sparse-tf ARGV` in an interpreter without the optional packages."""
    code = f"from sparse_tf.cli import main; main({list(argv)!r})"
    return run_without_extras(code, timeout=timeout)


def test_the_blocker_blocks() -> None:
    """The premise of this file: under BLOCKER each optional package is missing."""
    for name in OPTIONAL:
        result = run_without_extras(f"import {name}")
        assert result.returncode == 1
        assert f"ModuleNotFoundError: No module named '{name}'" in result.stderr


def core_modules() -> list[str]:
    """Every module of sparse_tf but the analyses (the [analysis] extra, checked below); the
    kernel modules too, which define their Triton kernels on triton_support's stand-ins."""
    names = [m.name for m in pkgutil.walk_packages(sparse_tf.__path__, "sparse_tf.")]
    optional = ("sparse_tf.analysis", "sparse_tf.cli.__main__")
    return [n for n in names if not n.startswith(optional) and n != "sparse_tf._scm_version"]


def test_no_core_module_imports_an_optional_package() -> None:
    modules = core_modules()
    assert "sparse_tf.cli.commands" in modules
    assert "sparse_tf.kernels.abstopk" in modules
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "from sparse_tf import *\nprint('imported', len(sys.modules))"
    result = run_without_extras(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported")


def test_train_help_without_extras() -> None:
    result = sparse_tf_without_extras("train", "--help")
    assert result.returncode == 0, result.stderr
    assert "--wandb {auto,offline,online,disabled}" in result.stdout
    assert "noqa" not in result.stdout  # lint comments are not help text


def test_top_level_help_does_not_import_torch() -> None:
    code = "from sparse_tf.cli import main\nmain(['--help'])\n"
    code += "print('torch' in sys.modules, 'tyro' in sys.modules)"
    result = run_without_extras(code)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout
    assert result.stdout.splitlines()[-1] == "False False"


@pytest.mark.parametrize(
    "command",
    [
        "eval",
        "perturb",
        "tasks",
        "analyze",
        "analyze ace",
        "convert",
        "calibrate",
        "plot",
        "describe",
        "prune",
        "data prepare",
        "train",
        "bridge",
    ],
)
def test_help_does_not_import_torch(command: str) -> None:
    """Every command parses its flags before importing the library: they are plain values or
    torch-free configs (describe's GPTConfig and SparsityConfig, prune's PruneConfig, data
    prepare's DataConfig, train's TrainConfig and RunOptions and its presets, bridge's
    BridgedTrainConfig)."""
    code = "from sparse_tf.cli import main\ntry:\n"
    code += f"    main({command.split()!r} + ['--help'])\nexcept SystemExit as e:\n"
    code += "    assert not e.code, e.code\n"
    code += "print([m for m in ('torch', 'numpy', 'tokenizers') if m in sys.modules])"
    result = run_without_extras(code)
    assert result.returncode == 0, result.stderr
    assert "usage: sparse-tf" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"  # none of the heavy imports


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--print-config"],
        ["bridge", "--print-config"],  # --dense is needed to train, not to print the config
        ["bridge", "--dense", "runs/gpt2", "--preset", "paper-d1024", "--print-config"],
    ],
)
def test_print_config_does_not_import_torch(argv: list[str]) -> None:
    """--print-config parses and prints the config without the trainer."""
    code = f"from sparse_tf.cli import main\nmain({argv!r})\n"
    code += "print([m for m in ('torch', 'numpy', 'tokenizers') if m in sys.modules])"
    result = run_without_extras(code)
    assert result.returncode == 0, result.stderr
    assert "[sparsity]" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"  # none of the heavy imports


# Each feature that needs an extra, and its one line (after any progress lines).
NEEDS_AN_EXTRA = [
    (
        ["train", "--data.source", "hf:some/corpus"],
        "sparse-tf train: error: data.source='hf:some/corpus': needs the [hf] extra: "
        "pip install 'sparse_tf[hf]'",
    ),
    (
        ["train", "--preset", "gpt2-tiny-cpu"],
        "sparse-tf train: error: the dense GPT-2 (sparse_tf.gpt2): needs the [hf] extra: "
        "pip install 'sparse_tf[hf]'",
    ),
    (
        ["bridge", "--dense", "runs/gpt2"],
        "sparse-tf bridge: error: the dense GPT-2 (sparse_tf.gpt2): needs the [hf] extra: "
        "pip install 'sparse_tf[hf]'",
    ),
    (
        ["train", "--wandb", "offline"],
        "sparse-tf train: error: RunOptions.wandb='offline': needs the [wandb] extra: "
        "pip install 'sparse_tf[wandb]'",
    ),
    (
        ["analyze", "ace", "--models", "a", "b"],
        "sparse-tf analyze: error: sparse_tf.analysis (sparse-tf analyze): needs the "
        "[analysis] extra: pip install 'sparse_tf[analysis]'",
    ),
    (
        ["plot", "runs/tiny-cpu"],
        "sparse-tf plot: error: the plots (matplotlib): needs the [plot] extra: "
        "pip install 'sparse_tf[plot]'",
    ),
]


def test_a_missing_extra_is_one_line(tmp_path: Path) -> None:
    """Every case in one interpreter (torch is imported once): each command's stderr and exit
    status, separated by a marker line."""
    code = "import contextlib, io\nfrom sparse_tf.cli import main\n"
    for i, (argv, _) in enumerate(NEEDS_AN_EXTRA):
        out = str(tmp_path / f"out{i}")
        code += f"try:\n    main({[*argv, '--out', out]!r})\nexcept SystemExit as e:\n"
        code += "    print(f'==== {e.code}', file=sys.stderr)\n"
    result = run_without_extras(code)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    parts = result.stderr.split("==== ")[:-1]
    said = [part.strip().splitlines() for part in parts]
    statuses = [part.split("\n", 1)[0] for part in result.stderr.split("==== ")[1:]]
    assert statuses == ["1"] * len(NEEDS_AN_EXTRA)
    for lines, (_, expected) in zip(said, NEEDS_AN_EXTRA, strict=True):
        assert lines[-1] == expected


# Without triton: every kernel module imports (its kernels defined on triton_support's
# stand-ins), every op runs its reference, and a kernel launched anyway is a KernelError.
WITHOUT_TRITON = """
import importlib, os, pkgutil, types
os.environ["TRITON_INTERPRET"] = "1"  # even so: the reference paths
os.environ.pop("SPARSE_TF_KERNELS", None)
import torch
import torch.nn.functional as F
import sparse_tf.kernels as K
from sparse_tf.kernels import abstopk, gelu_abstopk, norm_abstopk, projection, rule, spmm
from sparse_tf.kernels import triton_support
modules = [m.name for m in pkgutil.iter_modules(K.__path__, "sparse_tf.kernels.")]
for name in modules:
    importlib.import_module(name)
assert not triton_support.INSTALLED and not K.triton_installed()
assert not isinstance(triton_support.triton, types.ModuleType)
assert "triton" not in sys.modules

torch.manual_seed(0)
x = torch.randn(3, 2, 64, requires_grad=True)
assert K.abs_topk_backend(x) == "reference" == K.projection_backend(x)
y = K.abs_topk(x, 5)
y.sum().backward()
assert torch.equal(y != 0, rule.topk_mask(x.detach().abs(), 5))
assert torch.equal(x.grad != 0, y != 0)
assert torch.equal(K.abs_topk_mask(x, 5), y != 0)
q, kv = K.abs_topk_split(x, 3, 2)
assert torch.equal(kv, abstopk.reference_forward(x[..., 32:], 3))
r = torch.randn(3, 2, 64)
assert torch.equal(K.residual_abs_topk(r, x, 5), r + y)
assert torch.equal(K.gelu_abs_topk(x, 5), gelu_abstopk.reference(x, 5))
gain = torch.rand(64) + 0.5
assert torch.equal(K.norm_abs_topk(x, gain, 5), norm_abstopk.reference(x, gain, 5))
ws = [torch.randn(8, 16), torch.randn(16, 8)]
protections = [projection.Protect(dim=0, j=2), None]
masks = K.projection_masks(ws, protections, [20, 30])
expected = projection.reference_masks(ws, protections, [20, 30])
assert all(torch.equal(m, e) for m, e in zip(masks, expected))
K.project_(ws, protections, [20, 30])
assert [int((w != 0).sum()) for w in ws] == [20, 30]
w = torch.randn(16, 64) * (torch.rand(16, 64) < 0.1)
assert K.spmm_plan(x, w, int((w != 0).sum())) == K.DENSE
out = K.sparse_linear(x.detach(), w, None, int((w != 0).sum()), spmm.WeightFormats())
assert torch.equal(out, F.linear(x.detach(), w))

os.environ["SPARSE_TF_KERNELS"] = "triton"
for call in (lambda: K.abs_topk(x, 5), lambda: K.spmm_plan(x, w, 20)):
    try:
        call()
        raise AssertionError("SPARSE_TF_KERNELS=triton ran without triton")
    except K.KernelError as e:
        assert "which is not installed" in str(e), e
try:
    abstopk.forward(x.detach(), 5)  # a kernel launched anyway
    raise AssertionError("a stand-in kernel ran")
except K.KernelError as e:
    print(e)
"""


def test_kernels_without_triton() -> None:
    """Every kernel module imports without triton (no module imports it but through
    `kernels.triton_support`) and every op takes its reference path."""
    result = run_without_extras(WITHOUT_TRITON)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "the Triton kernel _abstopk_fwd_kernel cannot run: triton is not installed"
    )


def test_trains_on_cpu_without_extras(tmp_path: Path) -> None:
    """A core install trains with the default --wandb auto (disabled: one line says so) and
    the kernels' reference paths (no triton, even with TRITON_INTERPRET=1 set)."""
    out = tmp_path / "run"
    flags = ["--data.source", "process:markov4", "--model.vocab-size", "8", "--model.n-ctx", "32",
             "--model.n-layer", "1", "--model.d-model", "32", "--sparsity.l0", "0.25",
             "--max-steps", "3", "--batch-size", "4", "--out", str(out), "--progress", "none",
             "--device", "cpu"]  # fmt: skip
    result = sparse_tf_without_extras("train", *flags)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("wandb:")]
    assert said == [
        "wandb: not installed, logging to metrics.jsonl only (needs the [wandb] extra: "
        "pip install 'sparse_tf[wandb]')"
    ]
    assert (out / "final" / "model.safetensors").is_file()
    assert not (out / "wandb").exists()


def test_version() -> None:
    """The installed version (setuptools-scm, from the git tag), or 0+unknown in a source tree
    that was never installed: always a PEP 440 version string."""
    from packaging.version import Version

    assert str(Version(sparse_tf.__version__)) == sparse_tf.__version__
