"""How fast `sparse-tf data prepare` tokenises, how it scales with workers, and its memory.

Generates a corpus locally (no network): the running interpreter's standard library, repeated
with deterministic variations (copy k renames `self` to `self_k` and prefixes each file with a
comment), up to about `--tokens` tokens (3.4 characters per token on the stdlib with the
default BPE; 1B tokens is ~3.4 GB of text). Trains the tokenizer once, on the first copy (the
standard library itself: training it on the whole corpus would take longer than the encoding
being measured), then prepares the token store of the whole corpus afresh with each worker
count, each in its own process (the tokenizer handed in), and prints a table: tokens/s,
per worker, speed-up, peak RSS of the main process and of the largest worker, the store's
size on disk, and the projected time for the paper's 32B tokens.

    python benchmarks/data_speed.py --tokens 10_000_000 --workers 1 2
    python benchmarks/data_speed.py --tokens 1_000_000_000 --workers 1 8 32 64 --dir /scratch/ds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

CHARS_PER_TOKEN = 3.4
PAPER_TOKENS = 32e9

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from sparse_tf.data import DataConfig
from sparse_tf.data.pipeline import prepare_tokens
from sparse_tf.data.sources import open_corpus
from sparse_tf.data.tokenizer import corpus_bpe
from sparse_tf.io import cache_dir
from sparse_tf.tasks import task_tokens
source, workers = sys.argv[1], int(sys.argv[2])
# The BPE of the first copy (the standard library itself), cached after the first call.
tok = corpus_bpe(open_corpus(str(Path(source) / "v0000"), 0.0), 2048, cache_dir(), task_tokens())
if workers == 0:
    sys.exit(0)
t = time.perf_counter()
corpus, tok, shards = prepare_tokens(DataConfig(source=source), 2048, tokenizer=tok,
    reserved_tokens=task_tokens(), workers=workers)
print(json.dumps({
    "seconds": time.perf_counter() - t,
    "tokens": len(shards["train"]) + len(shards["val"]),
    "documents": corpus.size,
    "store": str(shards["train"].files[0].parent),
    "rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def generate(folder: Path, tokens: int) -> int:
    """Write the corpus into `folder` (reused when complete); its number of files."""
    done = folder / ".complete"
    if done.is_file():
        return int(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not {"site-packages", "dist-packages", "__pycache__"} & set(p.parts)
    )
    budget, n, copy = tokens * CHARS_PER_TOKEN, 0, 0
    while budget > 0:
        for p in files:
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if copy:
                text = f"# variant {copy}\n" + text.replace("self", f"self_{copy}")
            out = folder / f"v{copy:04d}" / p.relative_to(root)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            n += 1
            budget -= len(text)
            if budget <= 0:
                break
        copy += 1
    done.write_text(str(n))
    return n


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000_000, help="corpus size (about)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--dir", type=Path, default=None, help="where to generate (default tmp)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.gettempdir()) / "sparse_tf_data_speed"
    corpus = base / f"corpus-{args.tokens}"
    files = generate(corpus, args.tokens)
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=base))
    env = {**os.environ, "SPARSE_TF_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    print(f"corpus: {files:,} files, {du(corpus) / 1e6:,.0f} MB of text in {corpus}")

    def run(workers: int) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(corpus), str(workers)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    subprocess.run([sys.executable, "-c", _CHILD, str(corpus), "0"], env=env, check=True)
    print(
        "| workers | tokens | seconds | tokens/s | tokens/s per worker | speed-up | "
        "peak RSS main (MB) | peak RSS largest worker (MB) | store (MB) | 32B tokens |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    one = None  # the 1-worker rate: the speed-up is only measured against a 1-worker run
    for w in args.workers:
        r = run(w)
        rate = r["tokens"] / r["seconds"]
        if w == 1:
            one = rate
        speedup = f"{rate / one:.2f}x" if one else "-"
        size = du(Path(r["store"])) / 1e6
        print(
            f"| {w} | {r['tokens']:,} | {r['seconds']:.1f} | {rate:,.0f} | {rate / w:,.0f} | "
            f"{speedup} | {r['rss_main']:,.0f} | {r['rss_worker']:,.0f} | {size:,.0f} | "
            f"{PAPER_TOKENS / rate / 3600:,.1f} h |",
            flush=True,
        )
        shutil.rmtree(r["store"])
    shutil.rmtree(cache)


if __name__ == "__main__":
    main()
