"""`sparse-tf data prepare`: parallel, resumable tokenising into the store the trainer reads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sparse_tf.cli import main
from sparse_tf.data import (
    EOT,
    CorpusError,
    DataConfig,
    TokenDataError,
    encode,
    open_corpus,
    prepare_data,
    save_tokenizer,
)
from sparse_tf.data.pipeline import prepare_command
from sparse_tf.data.tokenizer import corpus_bpe
from sparse_tf.data.tokens import NotPreparedError, pack_corpus
from tests.helpers import sample_corpus, tiny_train_flags


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_corpus(tmp_path_factory.mktemp("corpus"), ("json", "email"))


@pytest.fixture(scope="module")
def bpe_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenizers are trained once for the module; each test writes its own token store."""
    return tmp_path_factory.mktemp("bpe")


def _reference(corpus_dir: Path, bpe_cache: Path) -> tuple[object, object, list[int]]:
    """The corpus, its BPE, and its train stream encoded one document at a time."""
    corpus = open_corpus(str(corpus_dir), 0.1)
    tok = corpus_bpe(corpus, 320, bpe_cache)
    return corpus, tok, _stream(corpus, tok, "train")


def _stream(corpus: object, tok: object, split: str) -> list[int]:
    """The tokens of a split, encoded one document at a time."""
    ids: list[int] = []
    for text in corpus.documents(split):  # type: ignore[attr-defined]
        ids += [*tok.encode(text).ids, tok.token_to_id(EOT)]  # type: ignore[attr-defined]
    return ids


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_count_does_not_change_the_tokens(
    corpus_dir: Path, bpe_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(encode, "CHUNK_CHARS", 20_000)  # many parts, spread over the workers
    corpus, tok, expected = _reference(corpus_dir, bpe_cache)
    shards = pack_corpus(corpus, tok, tmp_path, shard_tokens=7_000, workers=workers)
    train = shards["train"]
    assert len(train.files) > 3  # shards cut across parts
    assert all(len(a) == 7_000 for a in train.arrays[:-1])
    assert train.slice(0, len(train)).tolist() == expected
    val = shards["val"]  # its chunks encoded while the last training chunks still are
    assert val.slice(0, len(val)).tolist() == _stream(corpus, tok, "val")
    assert not list((tmp_path / "tokens").glob(".*"))  # no work folder left


def test_an_interrupted_prepare_resumes_without_encoding_finished_parts(
    corpus_dir: Path, bpe_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode, "CHUNK_CHARS", 20_000)
    corpus, tok, expected = _reference(corpus_dir, bpe_cache)
    real_chunks = encode.chunks

    def killed_after_four(texts: object) -> object:
        for i, chunk in enumerate(real_chunks(texts)):  # type: ignore[arg-type]
            if i == 4:
                raise KeyboardInterrupt  # Ctrl-C while the main process reads the corpus
            yield chunk

    monkeypatch.setattr(encode, "chunks", killed_after_four)
    with pytest.raises(KeyboardInterrupt):
        pack_corpus(corpus, tok, tmp_path, workers=2)
    (work,) = (tmp_path / "tokens").glob(".*.partial")
    assert len(list((work / "parts").glob("train-*.npy"))) == 4  # the chunks it had sent

    monkeypatch.setattr(encode, "chunks", real_chunks)
    updates: list[bool] = []
    real_update = encode.Progress.update

    def spy(self: encode.Progress, docs: int, tokens: int, *, encoded: bool) -> None:
        updates.append(encoded)
        real_update(self, docs, tokens, encoded=encoded)

    monkeypatch.setattr(encode.Progress, "update", spy)
    train = pack_corpus(corpus, tok, tmp_path, workers=2)["train"]
    assert updates[:4] == [False] * 4  # the four finished parts were reused...
    assert all(updates[4:])  # ...and only the rest encoded
    assert len(updates) > 6
    assert train.slice(0, len(train)).tolist() == expected
    assert not work.exists()


def test_the_cli_prepares_what_train_then_only_opens(
    corpus_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPARSE_TF_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(source=str(corpus_dir), val_frac=0.1, task_tokens=False)
    with pytest.raises(NotPreparedError) as error:  # what a torchrun rank does: open only
        prepare_data(cfg, 320, 32, build=False)
    command = prepare_command(cfg, 320)
    assert f"run `{command}` first" in str(error.value)
    main([*command.split()[1:], "--workers", "2"])  # the very command the error names
    out, err = capsys.readouterr()
    assert "tokens/s" in err  # progress lines: stderr is not a terminal
    assert "train +" in out
    data = prepare_data(cfg, 320, 32, build=False)  # now there, and not rebuilt
    assert str(tmp_path / "cache") in str(data.train.tokens.files[0])
    assert data.val is not None


def test_train_shows_the_progress_data_prepare_shows_while_it_tokenises(
    corpus_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPARSE_TF_CACHE", str(tmp_path / "cache"))  # nothing prepared
    flags = [*tiny_train_flags(corpus_dir, 1), "--wandb", "disabled", "--progress", "lines"]
    main(["train", *flags, "--out", str(tmp_path / "first")])
    err = capsys.readouterr().err
    for line in ("opening", "tokenizer: training a 320-token BPE", "tokenising", "tokens/s"):
        assert line in err
    assert err.index("tokens/s") < err.index("sparse_tf ")  # before the run's banner


def test_cli_rejects_unknown_data_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["data", "cook"])
    assert exit_.value.code == 2
    assert "usage: sparse-tf data prepare" in capsys.readouterr().err


def test_chunks_are_cut_by_characters_the_same_way_every_time() -> None:
    texts = ["a" * 5, "b" * 3, "c" * 9, "d"]
    assert list(encode.chunks(texts, 8)) == [["a" * 5, "b" * 3], ["c" * 9], ["d"]]
    assert list(encode.chunks([], 8)) == []


# -- tokens:DIR ---------------------------------------------------------------------------------


@pytest.fixture
def token_dir(corpus_dir: Path, bpe_cache: Path, tmp_path: Path) -> Path:
    """A pre-tokenised export: train.npy (uint16), val.bin (raw uint16), tokenizer.json."""
    corpus = open_corpus(str(corpus_dir), 0.1)
    tok = corpus_bpe(corpus, 320, bpe_cache)
    shards = pack_corpus(corpus, tok, tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    np.save(out / "train.npy", shards["train"].slice(0, 5000).astype(np.uint16))
    shards["val"].slice(0, 800).astype(np.uint16).tofile(out / "val.bin")
    save_tokenizer(tok, out)
    return out


def test_training_data_from_a_tokens_dir(token_dir: Path) -> None:
    data = prepare_data(DataConfig(source=f"tokens:{token_dir}", val_frac=0.1), 320, 32)
    assert len(data.train.tokens) == 5000
    assert data.val is not None
    assert len(data.val.tokens) == 800
    expected = np.fromfile(token_dir / "val.bin", np.uint16)
    assert data.val.tokens.slice(0, 800).tolist() == expected.tolist()
    assert data.summary()["corpus"]["kind"] == "tokens"


def test_tokens_dir_ids_beyond_the_model_vocab_are_one_line_naming_the_file(
    token_dir: Path,
) -> None:
    cfg = DataConfig(source=f"tokens:{token_dir}", val_frac=0.1)
    with pytest.raises(TokenDataError, match=r"set --model\.vocab-size 320"):  # tokenizer > model
        prepare_data(cfg, 300, 32)
    tokenizer = (token_dir / "tokenizer.json").read_bytes()
    (token_dir / "tokenizer.json").unlink()
    with pytest.raises(CorpusError, match=r"no .*tokenizer\.json"):
        prepare_data(cfg, 320, 32)
    (token_dir / "tokenizer.json").write_bytes(tokenizer)
    np.save(token_dir / "train.npy", np.array([1, 2, 4464, 3], np.uint16))
    with pytest.raises(
        TokenDataError, match=r"train\.npy: token id 4464 >= the model's vocab_size"
    ):
        prepare_data(cfg, 320, 32)
    (token_dir / "val.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(CorpusError, match=r"val\.bin: 3 bytes is not a whole number of uint16"):
        prepare_data(cfg, 320, 32)


# -- streamed datasets --------------------------------------------------------------------------


def _jsonl_dataset(folder: Path, texts: list[str | None]) -> str:
    """A folder `datasets.load_dataset` reads as JSON lines, in two files (read in name order)."""
    folder.mkdir()
    half = len(texts) // 2
    for name, part in (("train-00000.jsonl", texts[:half]), ("train-00001.jsonl", texts[half:])):
        rows = (json.dumps({"text": t, "n": i}) for i, t in enumerate(part))
        (folder / name).write_text("".join(row + "\n" for row in rows))
    return f"hf:{folder}"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where `datasets` writes what it downloads and converts (not the user's cache)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize(("rows", "val_frac"), [(60, 0.2), (3, 0.02)])  # 3: the fallback split
def test_a_streamed_dataset_gives_the_tokens_of_the_same_dataset_loaded_whole(
    corpus_dir: Path,
    tmp_path: Path,
    hf_cache: Path,
    rows: int,
    val_frac: float,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = "".join(f.read_text() for f in sorted((corpus_dir / "json").glob("*.py")))
    texts: list[str | None] = [code[i * 300 : i * 300 + 400] for i in range(rows)]
    texts[1] = None  # a missing text is an empty document, streamed or not
    source = _jsonl_dataset(tmp_path / "ds", texts)
    cfg = DataConfig(source=source, val_frac=val_frac, task_tokens=False, streaming=True)
    assert "--data.streaming" in prepare_command(cfg, 320)
    streamed = prepare_data(cfg, 320, 32, cache=tmp_path / "cache")
    assert not list(hf_cache.rglob("*.arrow"))  # nothing downloaded or converted first...
    whole = prepare_data(replace(cfg, streaming=False), 320, 32, cache=tmp_path / "cache")
    assert list(hf_cache.rglob("*.arrow"))  # ...unlike a whole load
    assert streamed.corpus.size is None
    assert whole.corpus.size == rows
    # The stream's documents, counted when its store was written, are in the run's summary.
    counts = ("documents", "train_documents", "val_documents")
    summary = streamed.summary()["corpus"]
    assert [summary[k] for k in counts] == [whole.summary()["corpus"][k] for k in counts]
    assert summary["documents"] == rows
    # `sparse-tf data prepare` of the stream (its store is there already) says how many.
    monkeypatch.setenv("SPARSE_TF_CACHE", str(tmp_path / "cache"))
    flags = ["--data.source", source, "--data.val-frac", str(val_frac), "--data.no-task-tokens"]
    main(["data", "prepare", *flags, "--data.streaming", "--vocab-size", "320"])
    assert f"{source}: {rows} documents, " in capsys.readouterr().out
    assert list(streamed.corpus.entries()) == list(whole.corpus.entries())
    assert streamed.corpus.digest != whole.corpus.digest  # identified by the builder's hash
    for split in ("train", "val"):
        assert list(streamed.corpus.documents(split)) == list(whole.corpus.documents(split))
    assert streamed.val is not None
    assert whole.val is not None
    for a, b in ((streamed.train, whole.train), (streamed.val, whole.val)):
        assert len(a.tokens) == len(b.tokens) > 0
        assert (
            a.tokens.slice(0, len(a.tokens)).tolist() == b.tokens.slice(0, len(b.tokens)).tolist()
        )


def test_a_streamed_dataset_without_the_text_column_is_one_line(
    tmp_path: Path, hf_cache: Path
) -> None:
    source = _jsonl_dataset(tmp_path / "ds", ["a = 1\n", "b = 2\n"])
    with pytest.raises(CorpusError) as error:
        open_corpus(source, 0.1, text_field="body", streaming=True)
    message = str(error.value)
    assert message.startswith(f"data.source={source!r}: no column 'body' (columns ['text', 'n'])")
    assert "--data.text-field" in message
    assert "\n" not in message
    with pytest.raises(CorpusError, match=r"cannot load the dataset: Bad split: test"):
        open_corpus(source, 0.1, hf_split="test", streaming=True)
