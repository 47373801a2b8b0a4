"""benchmarks/bench_probe.py: its meta-device case (a 70B Llama config patched with shape-only
verification) and one measurement of a toy-sized model run here, so the script does not rot. Its time
figures are printed by the script, never asserted; the memory measurement is left out here (it
changes the allocator of the whole process)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_probe", ROOT / "benchmarks" / "bench_probe.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_70b_decoder_on_the_meta_device_patches():
    bench = _load()
    found = bench.meta_70b()
    assert found["params"] > 70e9 and found["sites"] == 2 * 80 and found["verified"] is False


def test_a_measurement_runs(monkeypatch):
    bench = _load()
    monkeypatch.setitem(bench.DEPTHS, "tiny", ("timm", {"name": "vit_tiny_patch16_224", "depth": 2, "img_size": 32, "patch_size": 8}, 2))
    out = bench.one("tiny", "time", "cpu")
    assert out["blocks"] == 2 and out["params"] > 0
    assert all(out[k] > 0 for k in ("forward_s", "apply_s", "forward2_s"))
