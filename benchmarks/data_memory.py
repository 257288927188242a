"""Peak memory of preparing and opening a corpus, against its number of documents.

Builds two local corpora of many short documents (no network): a `datasets` dataset saved with
`save_to_disk` (`hf:DIR`, one row per document) and a directory of small files, at each
`--docs` count. For each it prepares the token store with one worker (`prepare_tokens`, with a
tokenizer trained once on a sample, so that BPE training is not measured), then opens it as a
training run does (`prepare_data(build=False)` and the data summary), each in a fresh process,
and prints the peak RSS (ru_maxrss) of that main process. Memory independent of the corpus
size shows as the same numbers at every count.

    python benchmarks/data_memory.py --docs 100_000 1_000_000 --kinds hf
    python benchmarks/data_memory.py --docs 10_000 100_000 --kinds dir
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from sparse_tf.data import DataConfig, load_tokenizer
from sparse_tf.data.pipeline import prepare_data, prepare_tokens
source, tokenizer, cache, what = sys.argv[1:5]
cfg = DataConfig(source=source, task_tokens=False)
tok = load_tokenizer(tokenizer)
t = time.perf_counter()
if what == "prepare":
    corpus, tok, shards = prepare_tokens(cfg, 512, tokenizer=tok, cache=Path(cache), workers=1)
    tokens = len(shards["train"]) + len(shards["val"])
else:
    data = prepare_data(cfg, 512, 64, tokenizer=tok, cache=Path(cache), build=False)
    data.summary()
    tokens = len(data.train.tokens) + (len(data.val.tokens) if data.val is not None else 0)
print(json.dumps({
    "seconds": time.perf_counter() - t,
    "tokens": tokens,
    "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def text(i: int) -> str:
    return f"def f{i}(x):\n    return x * {i % 97} + {i}\n"


def make_hf(folder: Path, docs: int) -> str:
    import datasets

    if not (folder / "state.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        data = datasets.Dataset.from_dict({"text": [text(i) for i in range(docs)]})
        data.save_to_disk(str(folder))
    return f"hf:{folder}"


def make_dir(folder: Path, docs: int) -> str:
    done = folder / ".complete"
    if not done.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        for i in range(docs):
            sub = folder / f"d{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True)
            (sub / f"m{i:07d}.py").write_text(text(i))
        done.write_text(str(docs))
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", choices=["hf", "dir"], default=["hf", "dir"])
    parser.add_argument("--dir", type=Path, default=None, help="where to generate (default tmp)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.gettempdir()) / "sparse_tf_data_memory"
    base.mkdir(parents=True, exist_ok=True)
    from sparse_tf.data import save_tokenizer, train_bpe

    tokenizer = base / "tokenizer.json"
    if not tokenizer.is_file():
        save_tokenizer(train_bpe((text(i) for i in range(20_000)), 512), base)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print("| corpus | documents | tokens | prepare s | prepare peak RSS MB | open peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for kind in args.kinds:
        for docs in args.docs:
            make = make_hf if kind == "hf" else make_dir
            source = make(base / f"{kind}-{docs}", docs)
            cache = Path(tempfile.mkdtemp(prefix="cache-", dir=base))

            def run(what: str, source: str = source, cache: Path = cache) -> dict:
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, source, str(tokenizer), str(cache), what],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                return json.loads(out.stdout.strip().splitlines()[-1])

            prep, opened = run("prepare"), run("open")
            print(
                f"| {kind} | {docs:,} | {prep['tokens']:,} | {prep['seconds']:.1f} | "
                f"{prep['rss']:,.0f} | {opened['rss']:,.0f} |",
                flush=True,
            )
            shutil.rmtree(cache)


if __name__ == "__main__":
    main()
