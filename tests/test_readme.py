"""The README stays true: its Python examples run and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert block, "the Quickstart has a bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_python_examples_run(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code_blocks("python")[index], f"README.md python block {index}", "exec"), {})


def test_ci_runs_the_quickstart_commands() -> None:
    """CI runs the test command verbatim, and the training command shortened only in steps
    (the full default run takes minutes that CI's budget cannot hold). Each ends in `|| exit`:
    under `set -e` a failed install before the `&&` would not stop the script, and CI would
    fail later on a missing tool, hiding pip's own error."""
    train, test = quickstart_commands()
    assert train.endswith("sparse-tf train")
    assert test.endswith('python -m pytest -m "not slow"')
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert f"{test} || exit" in ci
    assert any(re.fullmatch(re.escape(train) + r" --max-steps \d+ \|\| exit", line) for line in ci)


def test_the_config_file_example_is_a_valid_config(tmp_path: Path) -> None:
    """The README's TOML example trains what it says: the preset it names, its values over it."""
    from sparse_tf.cli.commands import parse_train

    section = README.split("### Config files", 1)[1].split("\n### ", 1)[0]
    (example,) = re.findall(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    (tmp_path / "run.toml").write_text(example)
    args, config = parse_train(["--config", str(tmp_path / "run.toml")], bridged=False)
    assert (args.preset, args.run.out, config.max_steps) == ("circuits-d512", "runs/my-run", 2000)
    assert (config.model.d_model, config.model.d_mlp, config.optim.lr) == (256, 1024, 0.02)
