"""Your own tasks: `sparse-tf eval --pairs FILE` and `sparse-tf prune --pairs FILE` (pairs read
from JSON lines, checked against the model's tokenizer), and prune's exit status 3 when the
circuit misses the target loss."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from sparse_tf.cli import main
from sparse_tf.cli.commands import TARGET_MISSED_STATUS
from sparse_tf.data import load_tokenizer
from sparse_tf.filenames import CIRCUIT_FILE, HTML_FILE, MEANS_FILE, SCORES_FILE
from sparse_tf.pruning import load_circuit
from sparse_tf.pruning.search import PruneResult
from sparse_tf.tasks import TASKS, TaskError, TaskTokenError, read_pairs_file
from tests.helpers import run_prune

SHORT = [
    "--steps", "12", "--batch-pairs", "8", "--n-train", "32", "--n-val", "16", "--n-test", "16",
    "--curve-points", "6", "--mean-windows", "16",
]  # fmt: skip
"""A pruning run of a second or two on the tiny trained model (as tests/test_pruning.py's)."""


def _line(context_a: str, target_a: str, context_b: str, target_b: str, **extra: str) -> str:
    pair = {"a": {"context": context_a, "target": target_a}}
    pair["b"] = {"context": context_b, "target": target_b}
    return json.dumps({**extra, **pair}) + "\n"


@pytest.fixture(scope="module")
def quote_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 pairs of each split of single_double_quote, written by `sparse-tf tasks`."""
    file = tmp_path_factory.mktemp("pairs") / "quotes.jsonl"
    args = ["--task", "single_double_quote", "--split", "all", "--n", "16", "--out", str(file)]
    main(["tasks", *args])
    return file


# -- the file -----------------------------------------------------------------------------------


def test_tasks_out_writes_one_file_of_every_split(quote_pairs: Path) -> None:
    lines = [json.loads(line) for line in quote_pairs.read_text().splitlines()]
    assert [d["split"] for d in lines] == ["train"] * 16 + ["val"] * 16 + ["test"] * 16
    pairs = read_pairs_file(quote_pairs)
    assert pairs.name == "single_double_quote"  # every pair's task field
    assert pairs.counts() == {"train": 16, "val": 16, "test": 16}
    task = TASKS["single_double_quote"]
    for split in ("train", "val", "test"):
        assert pairs.pairs(100, split=split) == task.pairs(16, 0, split)
    assert pairs.pairs(3, split="val") == task.pairs(3, 0, "val")
    assert pairs.sha256 == hashlib.sha256(quote_pairs.read_bytes()).hexdigest()


def test_name_splits_and_malformed_lines(tmp_path: Path) -> None:
    # No task field: the file's stem names the task; a split field decides the split (these
    # one-line prompts share no line, so Pair.split would put them all in one split).
    mine = tmp_path / "my_quotes.jsonl"
    mine.write_text(
        _line('f("a', '")', "f('a", "')", split="train")
        + "\n"  # a blank line is skipped; line numbers still count it
        + _line('g("b', '")', "g('b", "')", split="val")
        + _line('h("c', '")', "h('c", "')")
    )
    pairs = read_pairs_file(mine)
    assert pairs.name == "my_quotes"
    assert [(e.line, e.split) for e in pairs.entries][:2] == [(1, "train"), (3, "val")]
    assert pairs.entries[2].split == pairs.entries[2].pair.split  # no field: the built-in rule
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(_line('f("a', '")', "f('a", "')", task="x") + _line("a", "1", "b", "2"))
    assert read_pairs_file(mixed).name == "mixed"
    # A split the file has no pair of is named with the counts, before any work.
    one_split = tmp_path / "one.jsonl"
    one_split.write_text(_line('f("a', '")', "f('a", "')", split="train"))
    with pytest.raises(TaskError, match=r"one\.jsonl: no test pairs \(its 1 pairs: train 1, "):
        read_pairs_file(one_split).pairs(5, split="test")
    for text, needle in [
        ("not json\n", "not a task pair (Expecting value"),
        ('{"a": {"context": "x", "target": "y"}}\n', "missing field 'b'"),
        ('{"a": {"context": 3, "target": "y"}, "b": {"context": "x", "target": "z"}}\n',
         "a.context must be a string, not 3"),
        (_line("x", "y", "x", "z", split="dev"), "'split' 'dev': choose from"),
        (_line("x", "", "x", "z"), "a.target is empty"),
        (_line("x", "y", "x", "z", colour="red"), "unknown field(s) ['colour']"),
        ("[1, 2]\n", "a JSON object is expected, not list"),
    ]:  # fmt: skip
        bad = tmp_path / "bad.jsonl"
        bad.write_text(_line("p", "q", "p", "r") + text)
        with pytest.raises(TaskError) as info:
            read_pairs_file(bad)
        assert str(info.value).startswith(f"{bad}:2: not a task pair"), info.value
        assert needle in str(info.value), info.value
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskError, match="no pairs"):
        read_pairs_file(tmp_path / "empty.jsonl")


# -- sparse-tf eval --pairs --------------------------------------------------------------------


def test_eval_pairs_scores_the_files_test_pairs(
    trained: Path, quote_pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "report.json"
    base = ["eval", "--model", str(trained), "--val-windows", "0"]
    main([*base, "--pairs", str(quote_pairs), "--json", str(report_file)])
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[0] == "single_double_quote"
    assert out[-1].startswith(f"test split of {quote_pairs} (sha256 ")
    report = json.loads(report_file.read_text())
    digest = hashlib.sha256(quote_pairs.read_bytes()).hexdigest()
    assert report["pairs_file"] == {
        "file": str(quote_pairs), "sha256": digest, "task": "single_double_quote",
        "train": 16, "val": 16, "test": 16,
    }  # fmt: skip
    assert report["n"] == 16
    # The same pairs as the built-in task's 16 test pairs, so the same scores.
    main([*base, "--task", "single_double_quote", "--n", "16", "--json", str(report_file)])
    builtin = json.loads(report_file.read_text())
    assert builtin["pairs_file"] is None
    assert report["tasks"] == builtin["tasks"]
    capsys.readouterr()
    main([*base, "--pairs", str(quote_pairs), "--n", "5", "--split", "val"])
    assert capsys.readouterr().out.splitlines()[2].split()[-1] == "5"  # --n caps a file's pairs


def test_a_candidate_of_two_tokens_is_one_line_naming_file_line_and_tokens(
    trained: Path, quote_pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "two_tokens.jsonl"
    lines = quote_pairs.read_text().splitlines(keepends=True)
    # Line 3: the b member's candidate is two tokens of the tiny model's tokenizer.
    pair = json.loads(lines[2])
    pair["b"]["target"] = "')zq"
    lines[2] = json.dumps(pair) + "\n"
    bad.write_text("".join(lines))
    for command in (
        ["eval", "--model", str(trained), "--pairs", str(bad)],
        ["prune", "--model", str(trained), "--pairs", str(bad), "--out", str(tmp_path / "o")],
    ):
        with pytest.raises(SystemExit) as info:
            main(command)
        assert info.value.code == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
        assert err.startswith(
            f'sparse-tf {command[0]}: error: {bad}:3: candidate "\')zq" is not a single token '
            "under this tokenizer (after the prompt it encodes as "
        ), err
        assert err.strip().endswith("as \"'\", ')', 'z', 'q')")  # every token it spans
    assert not (tmp_path / "o").exists()
    with pytest.raises(TaskTokenError, match=r"two_tokens\.jsonl:3: candidate"):
        read_pairs_file(bad).check_tokens(load_tokenizer(trained))


def test_pairs_and_a_task_name_are_refused_together(
    trained: Path, quote_pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = ["--model", str(trained), "--task", "single_double_quote", "--pairs", str(quote_pairs)]
    for command in (["eval", *both], ["prune", *both, "--out", str(tmp_path / "o")]):
        with pytest.raises(SystemExit) as info:
            main(command)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"sparse-tf {command[0]}: error: --task single_double_quote and --pairs "
            f"{quote_pairs}: give one (--pairs is your own task; its name comes from the file)"
        ]
    with pytest.raises(SystemExit) as info:
        main(["prune", "--model", str(trained), "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "give --task NAME (a built-in task) or --pairs FILE.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- sparse-tf prune --pairs, and a missed target ------------------------------------------------


def test_prune_pairs_records_the_file_and_a_missed_target_exits_3_keeping_the_files(
    trained: Path, quote_pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "circuit"
    given = str(quote_pairs)
    with pytest.raises(SystemExit) as info:
        main(["prune", "--model", str(trained), "--pairs", given, "--out", str(out), *SHORT])
    # The tiny model does not learn the task: its circuit misses the default target (0.15).
    assert info.value.code == TARGET_MISSED_STATUS == 3
    captured = capsys.readouterr()
    assert "pairs: 16 train, 16 val, 16 test of " in captured.out
    summary = captured.out[captured.out.index("TARGET MISSED") :].splitlines()
    assert summary[0].startswith("TARGET MISSED: the circuit misses the target loss 0.15 ")
    assert summary[1].startswith("circuit for single_double_quote: ")
    assert captured.err.strip().splitlines()[-1] == (
        f"sparse-tf prune: the circuit misses the target loss 0.15 (exit status 3); its files "
        f"are in {out}"
    )
    for name in (CIRCUIT_FILE, HTML_FILE, MEANS_FILE, SCORES_FILE):  # the result, kept
        assert (out / name).is_file(), name
    circuit = load_circuit(out)
    assert not circuit.met_target
    assert circuit.task == "single_double_quote"
    assert circuit.pairs_file == {
        "file": given, "sha256": hashlib.sha256(quote_pairs.read_bytes()).hexdigest(),
        "task": "single_double_quote", "train": 16, "val": 16, "test": 16,
    }  # fmt: skip
    # A built-in task records no file.
    builtin = tmp_path / "builtin"
    args = ["prune", "--model", str(trained), "--task", "single_double_quote", *SHORT]
    assert run_prune([*args, "--out", str(builtin), "--means", str(out / MEANS_FILE)]) == 3
    assert load_circuit(builtin).pairs_file is None


def test_a_met_target_exits_0(
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The status follows the circuit: the same command exits 0 when the circuit meets the
    target (no tiny model does, so pruning itself is replaced by a result that meets it)."""
    from sparse_tf.pruning import run

    out = tmp_path / "o"
    assert run_prune(["prune", "--model", str(trained), "--task", "single_double_quote",
                      "--out", str(out), *SHORT]) == 3  # fmt: skip
    capsys.readouterr()
    missed = load_circuit(out)
    sufficiency = {**missed.sufficiency, "loss": 0.1, "meets_target": True}
    met = dataclasses.replace(missed, reached_target=True, sufficiency=sufficiency)
    assert met.met_target
    assert not dataclasses.replace(met, reached_target=False).met_target  # val missed
    result = {met.target_loss: PruneResult(met, {})}
    monkeypatch.setattr(run, "prune_model_targets", lambda *a, **k: result)
    main(["prune", "--model", str(trained), "--task", "single_double_quote",
          "--out", str(tmp_path / "x")])  # fmt: skip
    assert "TARGET MISSED" not in met.summary()
    assert "misses the target" not in capsys.readouterr().err
