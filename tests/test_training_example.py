"""The train-from-scratch example runs end to end (a seconds-long --quick run) and writes its plot."""

import importlib.util
import sys
from pathlib import Path

import pytest
from training_fixtures import single_thread  # noqa: F401  (autouse: one CPU thread)

pytest.importorskip("sklearn", reason="the example needs scikit-learn (pip install 'droppath-surgery[examples]')")
pytest.importorskip("matplotlib", reason="the example needs matplotlib (pip install 'droppath-surgery[examples]')")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_from_scratch.py"


def test_train_from_scratch_example_quick_run_writes_a_png_and_both_histories(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_from_scratch_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "curves.png"
        histories = module.main(["--quick", "--out", str(out)])
    finally:
        sys.modules.pop(spec.name, None)
    assert [h.name for h in histories] == ["no drop path", "drop path 0.2 (constant)"]
    assert all(len(h.val_acc) == 1 and 0.0 <= h.val_acc[0] <= 1.0 for h in histories)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "eval output bitwise unchanged: True" in printed
    assert "best val acc" in printed and "blocks.1.drop_path2" in printed
