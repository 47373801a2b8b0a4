"""The decoder-LM layer-drop example (a Llama-style byte model trained on Python's stdlib) runs end to end
in its --quick mode: layer drop at every decoder layer on LayerSkip's exp schedule, the no-drop arm
learns, the plot is written, and removing drop path leaves the eval loss bitwise unchanged."""

import contextlib
import io
import math
import sysconfig
from pathlib import Path

import pytest
from helpers import example_module
from training_fixtures import single_thread  # noqa: F401  (autouse: one CPU thread)

from droppath_surgery import apply_drop_path, drop_path_report, is_patched, remove_drop_path

pytest.importorskip("transformers", reason="the example needs transformers (pip install 'droppath-surgery[examples]')")
pytest.importorskip("matplotlib", reason="the example needs matplotlib (pip install 'droppath-surgery[examples]')")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RATE = 0.3


@pytest.fixture(scope="module")
def example():
    with example_module("llm_layer_drop.py") as module:
        yield module


@pytest.fixture(scope="module")
def quick_run(example, tmp_path_factory):
    """One --quick run for the tests below: its arms, what it printed and its PNG."""
    out = tmp_path_factory.mktemp("llm_layer_drop") / "curves.png"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        arms = example.main(["--quick", "--rate", str(RATE), "--seed", "0", "--out", str(out)])
    return arms, printed.getvalue(), out


def test_the_corpus_is_pythons_stdlib_with_files_held_out(example):
    root = Path(sysconfig.get_paths()["stdlib"])
    files = example.stdlib_files()
    relative = [p.relative_to(root).as_posix() for p in files]
    assert len(files) > 100 and relative == sorted(relative) and all(r.endswith(".py") for r in relative)
    assert "os.py" in relative and "json/decoder.py" in relative
    assert not any(set(Path(r).parts) & example.EXCLUDED_DIRS for r in relative)
    train, val = example.load_corpus(1 << 16, 1 << 13)
    assert len(train) >= 1 << 16 and len(val) >= 1 << 13
    assert bytes(val[:2000].tolist()) not in bytes(train.tolist())  # held out by file
    again = example.load_corpus(1 << 16, 1 << 13)
    assert bytes(again[0].tolist()) == bytes(train.tolist())  # deterministic


def test_quick_run_writes_a_png_and_a_table_with_every_arm(quick_run):
    arms, printed, out = quick_run
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    assert [a.key for a in arms] == ["none", "skip", "mask"]
    header = "| arm | steps | wall time s | time/step s | time/step vs none | final train loss | final val loss | val perplexity |"
    assert header in printed
    for a in arms:
        row = next(line for line in printed.splitlines() if line.startswith(f"| {a.name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1]) == len(a.step_seconds) and float(cells[6]) == pytest.approx(a.val_loss[-1], abs=1e-4)
        assert float(cells[7]) == pytest.approx(math.exp(a.val_loss[-1]), abs=0.01)
    assert f"layer drop {RATE:g} (skip)" in printed and f"layer drop {RATE:g} (mask)" in printed


def test_losses_are_finite_and_the_baseline_learns(quick_run):
    arms, _, _ = quick_run
    steps = len(arms[0].step_seconds)
    for a in arms:
        assert len(a.train_loss) == len(a.step_seconds) == steps
        assert a.val_step[0] == 0 and a.val_step[-1] == steps and len(a.val_loss) == len(a.val_seconds) >= 3
        assert all(math.isfinite(x) for x in a.train_loss + a.val_loss)
        assert a.val_seconds == sorted(a.val_seconds) and a.val_seconds[-1] == pytest.approx(a.seconds)
    none = arms[0]
    assert none.train_loss[-1] < none.train_loss[0] and none.val_loss[-1] < none.val_loss[0] - 0.1
    assert none.val_loss[0] == pytest.approx(math.log(256), abs=0.2)  # random init: about uniform over bytes
    # the same weights in every arm, and eval mode is bitwise the model without drop path
    assert all(a.val_loss[0] == none.val_loss[0] for a in arms)


def exp_rates(rate: float, layers: int) -> list[float]:
    return [rate * (2 ** (i / (layers - 1)) - 1) for i in range(layers)]


def test_layer_drop_sits_at_every_decoder_layer_on_the_exp_schedule(quick_run, example):
    arms, _, _ = quick_run
    layers = example.QUICK["layers"]
    for a in arms[1:]:
        for report in (a.apply_report, a.report):  # at apply time, and drop_path_report(model) after training
            assert len(report.sites) == 2 * layers and report.num_blocks == layers and report.num_modules == 2 * layers
            assert {s.path for s in report.sites} == {
                p for i in range(layers) for p in (f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp")
            }
            rates = [r for _, r in sorted(report.block_rates.items())]
            assert rates[0] == 0.0 and rates[-1] == pytest.approx(RATE)
            assert rates == pytest.approx(exp_rates(RATE, layers))
            assert all(s.rate == report.block_rates[s.block] for s in report.sites)  # one rate per layer
        assert a.apply_report.verified is True
        computes = {s.compute for s in a.report.sites}
        if a.key == "skip":
            last = [s.compute for s in a.report.sites if s.block == layers - 1]
            assert last == ["skip", "skip"]  # the last layer (rate RATE >= min_skip_rate) skips
        else:
            assert computes == {"mask"}


def test_removing_drop_path_leaves_the_eval_loss_bitwise_unchanged(quick_run, example):
    arms, printed, _ = quick_run
    layers = example.QUICK["layers"]
    for a in arms[1:]:
        assert a.removed == 2 * layers and not is_patched(a.model)
        assert a.val_after_removal == a.val_loss[-1]  # bitwise: ==, not approx
        assert f"[{a.name}] removed {2 * layers} DropPath modules; validation loss bitwise unchanged: True" in printed

    # And once more outside the example: patch the trained weights again, read the report, remove.
    cfg = example.QUICK
    _, val_stream = example.load_corpus(cfg["train_bytes"], cfg["val_bytes"])
    val = example.val_windows(val_stream, cfg["seq"], cfg["val_windows"])
    model = arms[1].model
    plain = example.evaluate(model, val, cfg["batch"])
    apply_drop_path(model, RATE, schedule="exp", granularity="block", skip_dropped=True)
    report = drop_path_report(model)
    assert len(report.sites) == 2 * layers
    model.train()
    patched = example.evaluate(model, val, cfg["batch"])  # evaluate switches to eval mode and back
    assert model.training
    assert remove_drop_path(model) == 2 * layers
    assert patched == plain == example.evaluate(model, val, cfg["batch"]) == arms[1].val_after_removal
