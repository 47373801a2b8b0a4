"""The README's main job, examples/quickstart.py, runs end to end on random weights."""

import runpy
import sys
from pathlib import Path

from training_fixtures import single_thread  # noqa: F401  (autouse: one CPU thread)

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_patches_trains_reschedules_skips_and_undoes(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(QUICKSTART)])
    runpy.run_path(str(QUICKSTART), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.count("eval output verified bitwise unchanged") == 2, printed
    assert "24 branches in 12 blocks" in printed  # timm ViT-S and HF ViT: two per block
    assert printed.count("after set_drop_path_rate: [0.2]") == 2
    assert "24/24 branches skip the dropped samples" in printed
    assert printed.count("the original modules are back") == 3
