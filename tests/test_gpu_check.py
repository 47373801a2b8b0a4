"""benchmarks/gpu_check.py end to end on CPU (``--device cpu --smoke``): every section runs and the one
table is well formed.

The figures of a smoke run mean nothing (tiny models, two steps); this checks that the script a lent
GPU will run does not fail on the way (sections, rows, counters, the sync column) before anyone
spends device time on it.
"""

import contextlib
import importlib.util
import io
import math
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

# (section, A, B) of every row the table must have
EXPECTED = [
    *[(1, a, b) for _ in ("bfloat16", "float32")
      for a, b in (("DropPath", "bare x * mask"), ("timm DropPath", "bare x * mask"), ("DropPath", "timm DropPath"))],
    (2, "skip", "masked"), (2, "skip", "none"), (2, "masked", "none"),
    (3, "compiled skip", "compiled masked"), (3, "compiled masked", "eager masked"),
    (4, "DropPath 4096x8", "-"), (4, "compiled, rate changes", "eager, rate changes"),
    (5, "skip", "masked"), (5, "skip", "none"), (5, "masked", "none"),
    *[(6, a, "eval forward") for _ in ("vit", "gpt_neox") for a in ("patch, masked", "patch, skip")],
]
NUMERIC = ["A ms", "B ms", "A/B time", "B/A speed-up", "A/B peak mem", "A/B saved act", "limit", "of limit"]


def number(cell: str) -> float | None:
    """The cell as a finite positive number, None for '-'; fails on anything else."""
    if cell == "-":
        return None
    value = float(cell)
    assert math.isfinite(value) and value > 0, cell
    return value


def parse(text: str) -> tuple[str, list[dict[str, str]]]:
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) >= 3, text
    columns = [c.strip() for c in table[0].strip("|").split("|")]
    assert set(table[1].replace("|", "")) == {"-"}, table[1]
    rows = []
    for line in table[2:]:
        cells = [c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split("|")]
        assert len(cells) == len(columns), line
        rows.append(dict(zip(columns, cells)))
    return lines[0], rows


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, str]:
    """(stdout, the file written) of ``gpu_check.py --device cpu --smoke``, run in this process through its
    ``main`` (a second interpreter would import torch, timm and transformers again: ~10 s more here)."""
    out = tmp_path_factory.mktemp("gpu_check") / "table.md"
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = module.main(["--device", "cpu", "--smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # --smoke runs on one thread
        torch._dynamo.reset()
    assert code == 0, stdout.getvalue()[-3000:] + stderr.getvalue()[-5000:]
    assert out.exists()
    return stdout.getvalue(), out.read_text()


def test_smoke_run_writes_one_table_with_every_sections_rows(smoke):
    stdout, text = smoke
    header, rows = parse(text)
    assert text.strip() in stdout  # the same table on stdout
    assert sum(line.startswith("| § |") for line in text.splitlines()) == 1  # one table
    assert f"torch {torch.__version__}" in header and "device CPU" in header and "dtype float32" in header
    assert [(int(r["§"]), r["A"], r["B"]) for r in rows] == EXPECTED
    assert not any("FAILED" in r["note"] or "skipped" in r["note"] for r in rows)
    assert "elapsed: §1" in text


def test_ratios_are_finite_positive_and_counts_are_integers(smoke):
    rows = parse(smoke[1])[1]
    for row in rows:
        values = {c: number(row[c]) for c in NUMERIC}
        if row["B"] != "-":
            assert values["A/B time"] and values["B/A speed-up"], row
            assert values["A/B time"] * values["B/A speed-up"] == pytest.approx(1, rel=0.01)
        assert row["no host sync"] == "n/a", row  # no sync debug mode on CPU
        assert values["A/B peak mem"] is None  # CUDA only
        section = int(row["§"])
        if section in (2, 5):
            assert values["A/B saved act"], row  # bytes saved for backward, any device
        if section in (3, 4):
            assert row["recompiles"].isdigit(), row
            assert int(row["recompiles"]) == 0, row  # fixed rate (3), or rate changes that only write buffers (4)
            assert row["cudagraph re-records"] == ("n/a" if section == 4 else "-"), row  # no CUDA graphs on CPU
        else:
            assert row["recompiles"] == "-", row
    layer_drop = next(r for r in rows if r["§"] == "5" and r["B"] == "none" and r["A"] == "skip")
    assert number(layer_drop["limit"]) > 1 and number(layer_drop["of limit"])
    assert number(layer_drop["of limit"]) == pytest.approx(
        number(layer_drop["B/A speed-up"]) / number(layer_drop["limit"]), rel=0.01
    )


def test_the_rate_written_between_compiled_calls_is_the_rate_dropped(smoke):
    op = next(r for r in parse(smoke[1])[1] if r["A"] == "DropPath 4096x8")
    assert "(follows the rate)" in op["note"] and "masks differ between replays: yes" in op["note"], op


def test_the_pipeline_rows_state_each_check_passed(smoke):
    """§6: each smoke model patched masked and skipping, verified, eval bitwise equal, undo exact."""
    rows = [r for r in parse(smoke[1])[1] if r["§"] == "6"]
    assert [r["row"].split(" ")[0] for r in rows] == ["timm:vit_tiny_patch16_224"] * 2 + ["hf:gpt_neox"] * 2
    for row in rows:
        note = row["note"]
        sites = int(note.split(" sites")[0])
        assert sites > 0, row
        for fact in ("verified True", "eval bitwise equal yes", f"undo exact yes ({sites} modules)", "train step finite yes"):
            assert fact in note, (fact, row)
        if row["A"] == "patch, skip":
            assert f"{sites}/{sites} branches skip" in note, row
