"""`sparse-tf plot RUN_DIR` and `sparse_tf.plots`: a real run's metrics drawn as PNGs with data
and labelled axes, one page embedding them, and one-line errors naming the file at fault."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_tf.cli import main
from sparse_tf.filenames import METRICS_FILE, PLOTS_DIR, PLOTS_HTML_FILE
from sparse_tf.plots import loss_vs_k_figure, png_bytes, read_run_metrics, run_charts
from tests.helpers import assert_plot_drawn

pytest.importorskip("matplotlib")  # the [plot] extra (sparse_tf.plots imports it when drawing)

CHARTS = ["loss", "l0", "lr", "tokens_per_s"]


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A folder holding the metrics.jsonl of the tiny trained run (conftest's `trained`: 12 steps
    logged every step, validated every 4), copied so that its plots land in this test's folder."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copyfile(trained.parent / METRICS_FILE, folder / METRICS_FILE)
    return folder


def test_plot_writes_a_png_per_chart_and_a_page_embedding_them(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["plot", str(run)])
    plots = run / PLOTS_DIR
    written = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert written == [plots / f"{name}.png" for name in CHARTS] + [plots / PLOTS_HTML_FILE]
    assert sorted(p.name for p in plots.iterdir()) == sorted(p.name for p in written)  # no temps
    page = (plots / PLOTS_HTML_FILE).read_text()
    for path in written[:-1]:
        png = path.read_bytes()
        assert_plot_drawn(png)
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
        assert f'alt="{path.name}"' in page
    assert "://" not in page  # no URL (":" is not in base64): nothing to fetch
    main(["plot", str(run), "--out", str(run / "elsewhere")])
    assert (run / "elsewhere" / "loss.png").is_file()


def test_the_charts_have_labelled_axes_and_the_runs_data(trained: Path) -> None:
    records = read_run_metrics(trained.parent)
    charts = run_charts(records, "tasks")
    assert [c.name for c in charts] == CHARTS
    loss = charts[0].figure
    by_step, by_tokens = loss.axes
    assert (by_step.get_xlabel(), by_tokens.get_xlabel()) == ("step", "tokens")
    assert by_step.get_ylabel() == "loss (nats/token)"
    labels = [line.get_label() for line in by_step.get_lines()]
    assert labels == ["train loss", "val loss (sampled windows)", "val loss (whole split)"]
    train = by_step.get_lines()[0]
    assert list(train.get_xdata()) == [r["step"] for r in records if "train/loss" in r]
    assert list(train.get_ydata()) == [r["train/loss"] for r in records if "train/loss" in r]
    assert list(by_step.get_lines()[1].get_xdata()) == [4, 8, 12]  # eval_every 4
    for chart, ylabel in zip(
        charts[1:], ["L0 (fraction of weights kept)", "learning rate", "tokens/s"], strict=True
    ):
        (ax,) = chart.figure.axes
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", ylabel)
        assert len(ax.get_lines()[0].get_xdata()) == 12
        assert ax.get_title().startswith("tasks: ")


def test_a_run_without_validation_leaves_the_val_curves_out(run: Path) -> None:
    records = [
        {k: v for k, v in r.items() if not k.startswith("val/")}
        for r in read_run_metrics(run)
        if "train/loss" in r
    ]
    (by_step, _), *_ = (c.figure.axes for c in run_charts(records, "no-val"))
    assert [line.get_label() for line in by_step.get_lines()] == ["train loss"]


def test_a_bridged_runs_losses_get_their_own_chart(run: Path) -> None:
    """A bridged run also logs bridge/{nmse_enc,nmse_dec,kl_d2s,kl_s2d} (the real command's
    records: tests/test_bridges.py); here they are added to a real run's records, one value
    per logged step, and drawn as two log-scale panels with the values as logged."""
    records = read_run_metrics(run)
    kinds = ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d")
    for i, r in enumerate(r for r in records if "train/loss" in r):
        r.update({f"bridge/{kind}": (j + 1) / (i + 1) for j, kind in enumerate(kinds)})
    charts = {c.name: c.figure for c in run_charts(records, "bridged")}
    assert list(charts) == [*CHARTS, "bridges"]
    nmse, kl = charts["bridges"].axes
    logged = [r for r in records if "bridge/kl_d2s" in r]
    for ax, pair in ((nmse, kinds[:2]), (kl, kinds[2:])):
        assert ax.get_yscale() == "log"
        assert ax.get_xlabel() == "step"
        lines = ax.get_lines()
        assert len(lines) == 2
        for line, kind in zip(lines, pair, strict=True):
            assert list(line.get_xdata()) == [r["step"] for r in logged]
            assert list(line.get_ydata()) == [r[f"bridge/{kind}"] for r in logged]
    assert_plot_drawn(png_bytes(charts["bridges"]))
    assert "bridges" not in {c.name for c in run_charts(read_run_metrics(run), "plain")}


def test_an_unterminated_last_line_is_a_record_still_being_written(run: Path) -> None:
    n = len(read_run_metrics(run))
    with open(run / METRICS_FILE, "a") as f:
        f.write('{"step": 13, "train/lo')
    assert len(read_run_metrics(run)) == n
    main(["plot", str(run), "--out", str(run / "p")])
    assert (run / "p" / PLOTS_HTML_FILE).is_file()


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sparse-tf plot: error: ")
    return err


def test_bad_input_is_one_line_naming_the_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    assert f"{missing}: no such folder" in _error(["plot", str(missing)], capsys)
    bare = tmp_path / "bare"
    bare.mkdir()
    assert f"{bare / METRICS_FILE}: no such file" in _error(["plot", str(bare)], capsys)
    (bare / METRICS_FILE).write_text("")
    assert f"{bare / METRICS_FILE}: empty" in _error(["plot", str(bare)], capsys)

    lines = (run / METRICS_FILE).read_text().splitlines(keepends=True)
    metrics = run / METRICS_FILE
    for bad, needle in (
        ("{not json\n", "line 3: not JSON"),
        ('["step", 3]\n', 'line 3: not a JSON object with an integer "step"'),
        ('{"step": "3"}\n', 'line 3: not a JSON object with an integer "step"'),
        ('{"step": 3, "train/loss": "low"}\n', "line 3: 'train/loss' is 'low', not a number"),
        ('{"step": 3, "bridge/kl_d2s": null}\n', "line 3: 'bridge/kl_d2s' is None, not a number"),
        ("\xff\n", "line 3: not JSON"),
    ):
        metrics.write_bytes("".join([*lines[:2], bad, *lines[2:]]).encode("latin-1"))
        assert f"{metrics}, {needle}" in _error(["plot", str(run)], capsys)
    assert not (run / PLOTS_DIR).exists()  # nothing written for bad input


def test_without_matplotlib_plot_names_the_extra(
    run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails: not found
    err = _error(["plot", str(run)], capsys)
    assert err == (
        "sparse-tf plot: error: the plots (matplotlib): needs the [plot] extra: "
        "pip install 'sparse_tf[plot]'"
    )


def test_plot_help_imports_neither_matplotlib_nor_torch() -> None:
    code = "import sys\nfrom sparse_tf.cli import main\ntry:\n    main(['plot', '--help'])\n"
    code += "except SystemExit:\n    pass\n"
    code += "print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: sparse-tf plot [-h] RUN_DIR [--out DIR]" in result.stdout
    assert result.stdout.splitlines()[-1] == "False False"


def test_loss_vs_k_figure_draws_the_curve_the_target_and_the_chosen_size() -> None:
    curve = [[0, 1.4], [1, 1.1], [3, 0.6], [10, 0.3], [24, 0.14], [100, 0.08], [400, 0.05]]
    fig = loss_vs_k_figure(curve, 0.15, 24, "single_double_quote")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "nodes kept (k, log scale)"
    assert ax.get_ylabel() == "task loss (val split, calibrated)"
    assert ax.get_xscale() == "log"
    curve_line, chosen, target = ax.get_lines()
    assert list(curve_line.get_xdata()) == [1, 3, 10, 24, 100, 400]  # k = 0 has no log
    assert (list(chosen.get_xdata()), list(chosen.get_ydata())) == ([24], [0.14])
    assert list(target.get_ydata()) == [0.15, 0.15]
    assert_plot_drawn(png_bytes(fig))
