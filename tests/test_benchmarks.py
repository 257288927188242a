"""The circuit benchmarks end to end in their --tiny modes (`benchmarks/circuit_size.py`,
`benchmarks/frontier.py`): real training, scoring and pruning of tiny models on the CPU, then
checks that the reports agree with their JSON, that the plots are drawn and that a second run
reuses everything."""

from __future__ import annotations

import base64
import itertools
import json
import math
import operator
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparse_tf.pruning import load_circuit
from tests.helpers import assert_plot_drawn

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, out: Path, *flags: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--tiny", "--out", str(out), *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table as rows of cells (header first, the |---| line dropped)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _num(cell: str) -> float | None:
    cell = cell.replace("✗", "").strip()
    return None if cell == "-" else float(cell)


def _check_png_and_html(out: Path, stem: str) -> None:

    png = (out / f"{stem}.png").read_bytes()
    assert_plot_drawn(png)
    page = (out / f"{stem}.html").read_text()
    embedded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert embedded
    assert base64.b64decode(embedded.group(1)) == png
    assert "<table>" in page


def test_run_jobs_runs_calls_in_worker_processes_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--jobs N: the calls' results in order, from spawned processes; a failing call's error
    is raised in the benchmark (and one job runs in the benchmark's own process)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from circuit_runs import BenchError, check_jobs, run_jobs

    calls = [(operator.pow, (2, n)) for n in range(6)]
    assert run_jobs(calls, 3) == [1, 2, 4, 8, 16, 32]
    assert run_jobs([(os.getpid, ())] * 2, 1) == [os.getpid()] * 2
    assert os.getpid() not in run_jobs([(os.getpid, ())] * 2, 2)
    with pytest.raises(ValueError, match="invalid literal"):
        run_jobs([(int, ("7",)), (int, ("seven",))], 2)
    with pytest.raises(BenchError, match="--jobs 0: must be >= 1"):
        check_jobs(0)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_run_jobs_workers_end_with_a_benchmark_killed_outright(tmp_path: Path) -> None:
    """A benchmark killed with SIGKILL cannot shut its pool down: its workers must not go on
    (pruning or training for nobody, holding the cores and their folders' locks)."""
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "from circuit_runs import run_jobs\n"
        "run_jobs([(time.sleep, (120,)), (time.sleep, (120,))], 2)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)

    def workers() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
            except OSError:  # a process that ended while being read
                continue
            alive = fields[0] != "Z"
            if alive and int(fields[1]) == parent.pid and b"--multiprocessing-fork" in cmdline:
                found.append(int(stat.parent.name))
        return found

    try:
        deadline = time.monotonic() + 60
        while len(started := workers()) < 2:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.1)
    finally:
        parent.kill()
        parent.wait()

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 20
    while any(running(pid) for pid in started):
        assert time.monotonic() < deadline, f"workers {started} outlived their benchmark"
        time.sleep(0.1)


def test_circuit_size_ratio_by_width_counts_only_circuits_that_meet_their_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ratio by dense width: per task, the dense model's edges over the sparse model's
    (counts floored at 1), None where either circuit misses its target, and the geometric mean
    over the rest."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from circuit_runs import CircuitSize, Scores
    from circuit_size import Args, by_width_entry

    def size(edges: int, reached: bool = True) -> CircuitSize:
        return CircuitSize(1, edges, reached, 0.1, 0.5, 1, "")

    args = Args(targets=(0.1, 0.3), bootstrap=200)
    tasks = ["a", "b", "c"]
    sparse = {"a": {0.1: size(10), 0.3: size(5)}, "b": {0.1: size(0), 0.3: size(4)},
              "c": {0.1: size(20, False), 0.3: size(8)}}  # fmt: skip
    dense = {"a": {0.1: size(100), 0.3: size(50, False)}, "b": {0.1: size(30), 0.3: size(16)},
             "c": {0.1: size(40), 0.3: size(32)}}  # fmt: skip
    scores = Scores(model="d", val_loss=2.345678, tasks={}, pairs=1)
    entry = by_width_entry(args, dense, sparse, tasks, scores)
    assert entry["val_loss"] == 2.3457
    assert entry["ratios"] == {"0.1": [10.0, 30.0, None], "0.3": [None, 4.0, 4.0]}
    assert entry["ratio"]["0.1"]["n"] == 2
    assert entry["ratio"]["0.1"]["estimate"] == pytest.approx(math.sqrt(300), abs=0.01)
    assert entry["ratio"]["0.3"]["estimate"] == 4.0


def test_circuit_size_ratio_of_a_pair_interpolates_its_widths_circuits_per_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The matched ratio as a pair of bracketing widths gives it: per task, the dense edges
    interpolated log-linearly between the pair's circuits over the sparse model's; None where
    any of the three circuits misses its target."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from circuit_runs import CircuitSize
    from circuit_size import Args, ratio_entry

    from sparse_tf.pruning.compare import match_loss

    def size(edges: int, reached: bool = True) -> CircuitSize:
        return CircuitSize(1, edges, reached, 0.1, 0.5, 1, "")

    args = Args(targets=(0.15,), bootstrap=200)
    m = match_loss({"d64": 3.0, "d256": 2.0}, 2.75)  # weights 0.75 on d64, 0.25 on d256
    sparse = {"a": {0.15: size(10)}, "b": {0.15: size(10)}, "c": {0.15: size(10)}}
    sizes = {
        "d64": {"a": {0.15: size(100)}, "b": {0.15: size(100)}, "c": {0.15: size(100)}},
        "d256": {"a": {0.15: size(1600)}, "b": {0.15: size(1600, False)}, "c": {0.15: size(1)}},
    }
    entry = ratio_entry(args, m, sizes, sparse, ["a", "b", "c"])
    # a: 100^0.75 * 1600^0.25 = 200 edges; b: d256 misses; c: 100^0.75 * 1^0.25 = 31.6.
    assert entry["ratios"] == {"0.15": [20.0, None, 3.16]}
    assert entry["ratio"]["0.15"]["n"] == 2
    assert entry["ratio"]["0.15"]["estimate"] == pytest.approx(math.sqrt(20.0 * 3.16), abs=0.01)


def test_circuit_size_says_when_the_best_lr_is_at_an_end_of_the_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A width whose best LR is the sweep's largest or smallest is flagged (its optimum may
    lie outside the sweep); one inside the sweep, or a sweep of one LR, is not."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from circuit_size import DenseRun, sweep_edge

    def run(width: str, lr: float) -> DenseRun:
        return DenseRun("dense", width, lr, f"dense-{width}-{lr}", None)  # type: ignore[arg-type]

    runs = [run(w, lr) for w in ("d64", "d128") for lr in (0.001, 0.002, 0.004)] + [
        run("d256", 0.1)
    ]
    assert sweep_edge(run("d64", 0.004), runs) == "largest"
    assert sweep_edge(run("d64", 0.001), runs) == "smallest"
    assert sweep_edge(run("d128", 0.002), runs) is None
    assert sweep_edge(run("d256", 0.1), runs) is None


def test_circuit_size_widens_each_sweep_beyond_the_end_where_its_best_lr_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A width whose best LR is the sweep's largest gets the next LR up (the sweep's ratio at
    that end, 4 significant digits), one whose best is the smallest the next one down; one
    with its best inside, a sweep of one LR, or one whose next LR rounds to one it has,
    nothing. A run that diverged to nan is never
    the best. The new runs train the same config at the new LR, under the usual key."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from circuit_runs import BenchError, Scores
    from circuit_size import Args, DenseRun, best_lrs, run_key, widened, with_lr

    from sparse_tf.presets import preset

    base = preset("circuits-d512")

    def run(width: str, lr: float, family: str = "dense") -> DenseRun:
        return DenseRun(family, width, lr, run_key(family, width, lr), with_lr(base, lr))

    losses = {
        ("dense", "d64"): {0.001: 3.0, 0.003: 2.9, 0.009: 2.8},  # best at the largest
        ("dense", "d128"): {0.001: 2.8, 0.003: 2.7, 0.009: 2.75},  # inside
        ("dense", "d256"): {0.002: 2.5, 0.004: math.nan, 0.008: 2.9},  # smallest; nan skipped
        ("dense-abstopk", "d64"): {0.01: 3.1},  # one LR: no edge
        ("dense-abstopk", "d128"): {0.001: 3.0, 0.0010001: 2.9},  # the next LR rounds to 0.001
    }
    runs = [run(w, lr, fam) for (fam, w), sweep in losses.items() for lr in sweep]
    scores = {
        r.key: Scores(model=r.key, val_loss=losses[(r.family, r.width)][r.lr], tasks={}, pairs=1)
        for r in runs
    }
    assert best_lrs(runs, scores)["dense"]["d256"].lr == 0.002
    more = widened(runs, scores)
    assert [(r.family, r.width, r.lr, r.key) for r in more] == [
        ("dense", "d64", 0.027, "dense-d64-lr0.027"),
        ("dense", "d256", 0.001, "dense-d256-lr0.001"),
    ]
    assert [r.cfg.optim.lr for r in more] == [0.027, 0.001]
    assert all(r.cfg.model == base.model for r in more)
    with pytest.raises(BenchError, match="--lr-rounds -1: must be >= 0"):
        Args(lr_rounds=-1)


def test_step_profile_floor_follows_from_its_own_table() -> None:
    """step_profile.py's floor: the sparse step less all its products plus half the dense
    step's backward products (the weight gradient, which stays dense), read back from the
    per-kind table the script prints (CPU operator times of the tiny shape)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), "--steps", "1",
         "--warmup", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    kinds, floors = _tables(proc.stdout)[:2]
    assert kinds[0][2:] == ["dense", "sparse_tf 1/64"]
    cell = {(row[0], row[1]): [float(c.strip("*")) for c in row[2:]] for row in kinds[1:]}

    def ms(phase: str, kind: str, column: int) -> float:
        return cell.get((phase, kind), [0.0, 0.0])[column]

    products = sum(
        ms(phase, kind, 1)
        for phase in ("forward", "backward")
        for kind in ("matmul", "sparse matmul")
    )
    step = cell[("step", "**all**")]
    floor = step[1] - products + ms("backward", "matmul", 0) / 2
    assert floors[0] == [
        "variant", "step", "products (fwd + bwd)", "floor", "dense / step", "dense / floor"
    ]  # fmt: skip
    name, *numbers = floors[1]
    assert name == "sparse_tf 1/64"
    assert float(numbers[0]) == pytest.approx(step[1], abs=0.01)
    assert float(numbers[1]) == pytest.approx(products, abs=0.03)
    assert float(numbers[2]) == pytest.approx(floor, abs=0.05)
    assert float(numbers[4].rstrip("x")) == pytest.approx(step[0] / floor, abs=0.01)


def test_step_gaps_counts_overlapping_kernels_once_and_charges_each_gap_to_its_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """step_gaps.py's split of a span into busy and idle time: kernels on several streams that
    overlap count once, a kernel inside another's interval opens no gap, and each gap is
    charged to the kernel that waited, named beside the one that ended last before it."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from step_gaps import gaps

    g = gaps(
        [  # (start, end, name), out of order
            (30.0, 35.0, "c"),
            (0.0, 10.0, "a"),
            (5.0, 12.0, "b"),  # overlaps a: busy 0-12
            (6.0, 8.0, "inside"),  # within a and b: no gap, no busy time of its own
            (50.0, 51.0, "c"),
        ]
    )
    assert g.span == 51.0
    assert g.busy == 12.0 + 5.0 + 1.0
    assert dict(g.idle_before) == {"c": 18.0 + 15.0}
    assert dict(g.count_before) == {"c": 2}
    assert sorted(g.gaps) == [(15.0, "c", "c"), (18.0, "b", "c")]
    assert gaps([]).span == 0.0


def test_step_speed_reports_each_step_s_host_time_within_its_wall_time() -> None:
    """step_speed.py prints `host ms` (the step's Python until it returned) beside `ms/step`
    (until its device finished): a column of its own, in every row, within the step."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_speed.py"), "--steps", "2",
         "--warmup", "1", "--only", "dense", "sparse_tf"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (table,) = _tables(proc.stdout)
    assert table[0] == ["variant", "L0", "mode", "ms/step", "host ms", "tokens/s", "vs dense"]
    assert [row[0] for row in table[1:]] == ["dense", "sparse_tf"]
    for row in table[1:]:
        wall, host = float(row[3]), float(row[4])
        assert 0 < host <= wall, row


def test_step_host_splits_each_variant_s_profiled_time_by_where_its_code_lives() -> None:
    """step_host.py at a tiny CPU shape: dense and sparse_tf are both timed and profiled; each
    variant's split by where the code lives adds up to its total (100 %, and its ms to the
    total row), with the sparse step's own code (sparse_tf's kernels/ and the rest) in it and
    the difference from dense as printed; the calls eager_step makes add up to the same total;
    each top list holds at most --top functions by decreasing self time; and the counts see
    the model's module calls and the sparse model's autograd Functions (no Triton launch: a
    CPU takes the reference path)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_host.py"), "--d-model", "32",
         "--n-layer", "1", "--n-ctx", "16", "--batch", "2", "--steps", "2", "--warmup", "1",
         "--l0", "0.25", "--top", "8"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    timing, by_where, by_call, counts, *tops = _tables(proc.stdout)
    assert [row[0] for row in timing[1:]] == ["dense", "sparse_tf 1/4"]
    for row in timing[1:]:
        host, full = float(row[1]), float(row[2])
        assert 0 < host <= full, row

    assert by_where[0] == [
        "where", "dense ms", "dense %", "sparse_tf 1/4 ms", "sparse_tf 1/4 %",
        "sparse_tf 1/4 - dense",
    ]  # fmt: skip
    rows = {row[0]: [float(c) for c in row[1:]] for row in by_where[1:]}
    total = rows.pop("total")
    for ms, pct in ((0, 1), (2, 3)):  # dense, sparse
        assert total[pct] == 100.0
        assert sum(r[pct] for r in rows.values()) == pytest.approx(100, abs=0.05 * len(rows))
        assert sum(r[ms] for r in rows.values()) == pytest.approx(
            total[ms], abs=0.005 * (len(rows) + 1)
        )
    assert rows["sparse_tf/kernels/"][2] > 0
    assert rows["sparse_tf, other modules"][2] > 0
    for r in [*rows.values(), total]:
        assert r[4] == pytest.approx(r[2] - r[0], abs=0.015)

    assert by_call[0] == ["in eager_step", "function", "dense", "sparse_tf 1/4"]
    for column, ms in ((2, total[0]), (3, total[2])):
        summed = sum(float(row[column]) for row in by_call[1:])
        assert summed == pytest.approx(ms, abs=0.005 * len(by_call))

    assert len(tops) == 2  # dense, sparse
    for top in tops:
        assert top[0] == ["function", "where", "calls", "self µs", "cum µs"]
        self_us = [float(row[3]) for row in top[1:]]
        assert 1 <= len(self_us) <= 8
        assert all(us > 0 for us in self_us)
        assert self_us == sorted(self_us, reverse=True)
        assert all(row[1] in rows for row in top[1:])  # a row of the by-where table

    assert counts[0] == ["count", "dense", "sparse_tf 1/4"]
    count = {row[0]: [float(c) for c in row[1:]] for row in counts[1:]}
    assert all(n > 1 for n in count["nn.Module calls (_call_impl)"])  # the model's and its parts'
    assert count["autograd Function applies (forward)"][1] > 0
    assert count["Triton launches (JITFunction.run)"] == [0.0, 0.0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error a CPU-only machine gives")
@pytest.mark.parametrize("script", ["circuit_size.py", "frontier.py"])
def test_cuda_graphs_reach_the_trainer(script: str, tmp_path: Path) -> None:
    """--cuda-graphs is the trainer's option: on a machine without CUDA the first training run
    says so in one line, before any step."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--tiny", "--out", str(tmp_path),
         "--cuda-graphs", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"{script}: error: --cuda-graphs: replays CUDA graphs, which need a CUDA device "
        "(this run is on cpu)"
    )
    assert not list((tmp_path / "models").glob("*/step-*"))  # no step was taken


@pytest.mark.slow
def test_circuit_size_tiny_writes_a_consistent_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "circuit-size"
    first = _run("circuit_size.py", out)
    for ext in ("md", "png", "html", "json"):
        assert (out / f"circuit_size.{ext}").is_file()
    r = json.loads((out / "circuit_size.json").read_text())
    # A model's targets on a task are pruned in one job, each trial's masks trained once: the
    # second target's trials took the first one's.
    assert re.search(r"target [\d.]+: .*\(\d+ s with 2 targets\)", first)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from circuit_runs import circuit_dir
    from circuit_size import TINY

    assert len(TINY.targets) == 2
    assert TINY.budget == 1
    folders = [circuit_dir(out, "sparse", r["tasks"][0], x) for x in TINY.targets]
    trials = [t for folder in folders for t in load_circuit(folder).trials]
    assert [t["reused_masks"] for t in trials] == [False, True]
    md = (out / "circuit_size.md").read_text()
    families = list(r["dense"])
    assert families == ["dense", "dense-abstopk"]
    assert r["tasks"], "no task compared"
    for name in families:
        assert r["dense"][name]["match"]["method"] in ("interpolated", "nearest", "exact")
        assert f"Matching, {name}: {r['dense'][name]['match']['text']}." in md

    # Per task: every table row is the JSON's row; every ratio is dense / sparse edges.
    ratios: dict[str, dict[str, list[float]]] = {n: {} for n in families}
    for task in r["tasks"]:
        section = md.split(f"### {task}\n", 1)[1].split("###", 1)[0]
        table = _tables(section)[0]
        assert table[0][:3] == ["target", "sparse nodes", "sparse edges"]
        assert [row[0] for row in table[1:]] == list(r["circuits"][task])
        for row in table[1:]:
            target = row[0]
            j = r["circuits"][task][target]
            assert _num(row[1]) == j["sparse"]["nodes"]
            assert _num(row[2]) == j["sparse"]["edges"]
            assert row[2].endswith("✗") == (not j["sparse"]["reached"])
            for i, name in enumerate(families):
                d = j[name]
                nodes, edges, ratio = row[3 + 3 * i : 6 + 3 * i]
                assert (_num(nodes), _num(edges), _num(ratio)) == (
                    d["nodes"],
                    d["edges"],
                    d["ratio"],
                )
                if d["ratio"] is not None:
                    assert d["ratio"] == round(d["edges"] / max(1, j["sparse"]["edges"]), 2)
                    ratios[name].setdefault(target, []).append(d["ratio"])

    # The summary: geometric mean of the per-task ratios, inside its interval, as in the table.
    summary = next(t for t in _tables(md) if t[0][0] == "target" and t[0][1] == "dense/sparse")
    seen = 0
    for row in summary[1:]:
        target = row[0]
        for i, name in enumerate(families):
            iv = r["ratio"][name][target]
            values = ratios[name].get(target, [])
            assert iv["n"] == len(values) == int(row[3 + 3 * i])
            if not values:
                assert iv["estimate"] is None
                assert row[1 + 3 * i] == "-"
                continue
            seen += 1
            geo = math.exp(sum(math.log(v) for v in values) / len(values))
            assert iv["estimate"] == pytest.approx(geo, abs=0.006)
            assert iv["low"] <= iv["estimate"] <= iv["high"]
            assert _num(row[1 + 3 * i]) == iv["estimate"]
            low, high = row[2 + 3 * i].split(" - ")
            assert (float(low), float(high)) == (iv["low"], iv["high"])
    assert seen, "no target with a ratio: the tiny run compares nothing"
    _check_png_and_html(out, "circuit_size")

    # Run again: everything is reused, nothing trained or pruned (with --jobs as without).
    again = _run("circuit_size.py", out, "--jobs", "2")
    assert not re.search(r"^(training|resuming) ", again, re.MULTILINE)
    assert re.search(r"target [\d.]+: .*\(reused\)", again)
    assert not re.search(r"\(\d+ s\)\n", again.split("# Circuit size")[0])
    assert json.loads((out / "circuit_size.json").read_text())["circuits"] == r["circuits"]

    # The ratio by width: every matched width, its per-task ratios from the circuit tables;
    # with --every-width, every width of every family.
    for name in families:
        matched = r["dense"][name]["match"]["keys"]
        assert sorted(r["by_width"][name]) == sorted(matched)
        for w, d in r["by_width"][name].items():
            for target, values in d["ratios"].items():
                for task, value in zip(r["tasks"], values, strict=True):
                    row = r["circuits"][task][target]
                    dense, sparse = row[name]["widths"][w], row["sparse"]
                    both = dense["reached"] and sparse["reached"]
                    expected = max(1, dense["edges"]) / max(1, sparse["edges"])
                    assert value == (round(expected, 2) if both else None)
    every = _run("circuit_size.py", out, "--every-width")
    r = json.loads((out / "circuit_size.json").read_text())
    for name in families:
        assert sorted(r["by_width"][name]) == sorted(r["dense"][name]["widths"])
    table = next(t for t in _tables(every) if t[0][:3] == ["family", "width", "val loss"])
    assert [(row[0], row[1]) for row in table[1:]] == [
        (name, w) for name in families for w in r["by_width"][name]
    ]

    # Every pair of widths that brackets the sparse loss: the matched pair's per-task ratios
    # are the circuit tables' wherever all three circuits meet the target.
    for name in families:
        matched = [d for d in r["by_pair"][name] if d["matched"]]
        if r["dense"][name]["match"]["method"] != "interpolated":
            assert not matched
            continue
        (pair,) = matched
        assert pair["keys"] == r["dense"][name]["match"]["keys"]
        for target, values in pair["ratios"].items():
            for task, value in zip(r["tasks"], values, strict=True):
                row = r["circuits"][task][target]
                met = row["sparse"]["reached"] and all(
                    row[name]["widths"][w]["reached"] for w in pair["keys"]
                )
                assert value == (row[name]["ratio"] if met else None)
    pairs = [t for t in _tables(every) if t[0][:3] == ["family", "pair", "matched"]]
    n_pairs = sum(len(r["by_pair"][name]) for name in families)
    assert len(pairs) == (1 if n_pairs else 0)
    assert sum(len(t) - 1 for t in pairs) == n_pairs

    # A larger search: every study resumed for one more trial. The ratio by search budget
    # gives, at budget 1, the figure of the budget-1 run (each study's first trial is the same)
    # and at budget 2 the matched ratio of this run's own circuits; one table row per budget.
    assert [d["budget"] for name in families for d in r["by_budget"][name]] == [1] * 2
    assert not [t for t in _tables(every) if t[0][:2] == ["family", "budget"]]
    larger = _run("circuit_size.py", out, "--every-width", "--budget", "2")
    r2 = json.loads((out / "circuit_size.json").read_text())
    for name in families:
        one, two = r2["by_budget"][name]
        assert (one["budget"], two["budget"]) == (1, 2)
        assert one == r["by_budget"][name][0]
        keys = r2["dense"][name]["match"]["keys"]
        if len(keys) == 2:
            (pair,) = [d for d in r2["by_pair"][name] if d["matched"]]
            assert two["ratios"] == pair["ratios"]
        else:
            assert two["ratios"] == r2["by_width"][name][keys[0]]["ratios"]
    (table,) = [t for t in _tables(larger) if t[0][:2] == ["family", "budget"]]
    assert [row[:2] for row in table[1:]] == [[n, b] for n in families for b in ("1", "2")]

    # Back at budget 1: the circuits are read from the budget-2 searches, sized as each search
    # stood after its first trial, so the report is the budget-1 run's.
    _run("circuit_size.py", out, "--every-width")
    r1 = json.loads((out / "circuit_size.json").read_text())

    def sizes(report: dict) -> list[tuple]:
        return [
            (c["nodes"], c["edges"], c["reached"])
            for by_target in report["circuits"].values()
            for row in by_target.values()
            for side in row.values()
            for c in [side, *side.get("widths", {}).values()]
        ]

    assert sizes(r1) == sizes(r)
    assert r1["ratio"] == r["ratio"]


@pytest.mark.slow
def test_circuit_size_tiny_widens_a_sweep_whose_best_lr_is_at_an_end(tmp_path: Path) -> None:
    """Two LRs: the best is always at an end, so one round adds the LR beyond it (at the same
    ratio) and the report's sweep lists three; run again, nothing is trained."""
    out = tmp_path / "circuit-size"
    flags = ["--families", "dense", "--dense-widths", "16", "--dense-lrs", "0.01", "0.02"]
    first = _run("circuit_size.py", out, *flags, "--lr-rounds", "1")
    r = json.loads((out / "circuit_size.json").read_text())
    d16 = r["dense"]["dense"]["widths"]["d16"]
    first_two = {lr: d16["sweep"][lr] for lr in ("0.01", "0.02")}
    best_of_two = min(first_two, key=first_two.__getitem__)
    added = "0.005" if best_of_two == "0.01" else "0.04"
    assert sorted(d16["sweep"], key=float) == sorted([*first_two, added], key=float)
    assert f"dense d16: the best LR, {best_of_two}, is the sweep's" in first
    assert (out / "models" / f"dense-d16-lr{added}" / "summary.json").is_file()
    again = _run("circuit_size.py", out, *flags, "--lr-rounds", "1")
    assert not re.search(r"^(training|resuming) ", again, re.MULTILINE)


@pytest.mark.slow
def test_frontier_tiny_writes_a_consistent_report(tmp_path: Path) -> None:
    out = tmp_path / "frontier"
    _run("frontier.py", out, "--jobs", "2")  # models and circuits two at a time
    r = json.loads((out / "frontier.json").read_text())
    md = (out / "frontier.md").read_text()
    assert len(r["models"]) == 6  # 3 widths x 2 L0s
    table = next(t for t in _tables(md) if t[0][0] == "model")
    assert [row[0] for row in table[1:]] == [m["key"] for m in r["models"]]
    for row, m in zip(table[1:], r["models"], strict=True):
        assert (int(row[1]), float(row[2]), float(row[3])) == (
            m["width"],
            pytest.approx(m["l0"], rel=1e-5),
            m["val_loss"],
        )
        assert (_num(row[4]), _num(row[5])) == (m["edges_geomean"], m["edges_mean"])
        common = [m["circuits"][t]["edges"] for t in r["common_tasks"]]
        if common:
            geo = math.exp(sum(math.log(max(1, e)) for e in common) / len(common))
            assert m["edges_geomean"] == pytest.approx(geo, abs=0.06)
    # The verdicts follow from the numbers.
    for l0, v in r["verdicts"].items():
        row = sorted((m for m in r["models"] if f"{m['l0']:g}" == l0), key=lambda m: m["width"])
        for step, (a, b) in zip(v["steps"], itertools.pairwise(row), strict=True):
            if a["edges_geomean"] is None:
                assert step["verdict"] == "unknown"
                continue
            lower = (b["val_loss"] < a["val_loss"], b["edges_geomean"] < a["edges_geomean"])
            higher = (b["val_loss"] > a["val_loss"], b["edges_geomean"] > a["edges_geomean"])
            want = "improves" if all(lower) else "worsens" if all(higher) else "mixed"
            assert step["verdict"] == want
        assert f"L0 {l0}: {v['verdict']}" in md
    _check_png_and_html(out, "frontier")


def test_kernel_registers_counts_warps_per_sm_from_registers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kernel_registers.py compiles the AbsTopK kernels and the projection's protected-keys
    kernel for Hopper on this machine and reads ptxas's register counts; the warps an SM holds
    follow from them (256-register units per warp, 32 blocks and 64 warps per SM at most)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from kernel_registers import resident_warps

    assert resident_warps(128, 1) == 16  # 4,096 registers a warp
    assert resident_warps(40, 8) == 48  # 6 blocks of 8 warps
    assert resident_warps(16, 1) == 32  # the 32-block limit
    assert resident_warps(24, 4) == 64  # the 64-warp limit
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_registers.py")],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (table,) = _tables(proc.stdout)
    assert table[0][0] == "kernel"
    # The header, seven AbsTopK kernels, the protected keys at 3 numbers of warps.
    assert len(table) == 1 + 7 + 3
    for name, warps, regs, _spilled, per_sm in table[1:]:
        assert 0 < int(regs) <= 255, name
        assert int(per_sm) == resident_warps(int(regs), int(warps)), name


def test_revision_runs_a_script_against_its_own_tree(tmp_path: Path) -> None:
    """benchmarks/revision.py runs the tree's own script with the tree's own sparse_tf (the
    installed one hidden) and the script's sibling modules importable, passing the arguments
    on; a folder that is not a tree, or an unknown revision, is a one-line error."""
    tree = tmp_path / "old"
    (tree / "sparse_tf").mkdir(parents=True)
    (tree / "sparse_tf" / "__init__.py").write_text('WHICH = "old"\n')
    (tree / "benchmarks").mkdir()
    (tree / "benchmarks" / "helper.py").write_text("VALUE = 7\n")
    (tree / "benchmarks" / "probe.py").write_text(
        "import sys\nimport sparse_tf\nfrom helper import VALUE\n"
        "print(sparse_tf.WHICH, sparse_tf.__file__, VALUE, sys.argv[1:])\n"
    )
    script = str(ROOT / "benchmarks" / "revision.py")
    run = subprocess.run(
        [sys.executable, script, str(tree), "benchmarks/probe.py", "--x", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    which, path, value, args = run.stdout.split(" ", 3)
    assert (which, value) == ("old", "7")
    assert Path(path).resolve().is_relative_to(tree.resolve())
    assert args.strip() == "['--x', '1']"
    alone = subprocess.run(
        [sys.executable, script, str(tree)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )  # the revision alone: only where its tree is
    assert (alone.returncode, alone.stdout.strip()) == (0, str(tree.resolve()))
    for bad, message in (
        (str(tmp_path), "not a revision's tree (no sparse_tf, benchmarks/)"),
        ("no-such-revision", "no-such-revision: not a folder and not a revision"),
    ):
        run = subprocess.run(
            [sys.executable, script, bad, "benchmarks/probe.py"],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert run.returncode == 2
        assert message in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the repository's history")
def test_revision_extracts_a_commit_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A git revision is extracted (sparse_tf and benchmarks only) into the store under its
    full commit, and reused after that."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from revision import tree_of

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = tree_of("HEAD", tmp_path)
    assert tree == tmp_path / commit
    assert sorted(p.name for p in tree.iterdir()) == ["benchmarks", "sparse_tf"]
    assert (tree / "sparse_tf" / "__init__.py").is_file()
    marker = tree / "sparse_tf" / "kept.txt"
    marker.write_text("the first extraction")
    assert tree_of(commit[:12], tmp_path) == tree
    assert marker.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [commit]  # no partial left behind
