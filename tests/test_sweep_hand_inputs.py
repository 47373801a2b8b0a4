"""The sweep's retry with hand-made ``example_inputs=`` (scripts/droppath_coverage/hand_inputs.py) for the
Hugging Face types whose automatic inputs cannot be built: the zero-argument record is kept, the outcome with
the hand inputs recorded beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.append(str(ROOT / "scripts"))  # appended: scripts/sweep.py must not shadow the package

from droppath_coverage import sweep
from training_fixtures import single_thread  # noqa: F401  (autouse: one torch thread, as the sweep)


def test_a_type_without_automatic_inputs_is_retried_with_its_hand_inputs():
    pytest.importorskip("transformers")
    res = sweep.sweep_hf("decision_transformer")
    # the zero-argument record stays what it was: the headline counts those runs only
    assert (res.status, res.stage) == ("failed", "inputs") and res.error.startswith("ExampleInputsError")
    assert res.sites is None and res.verified is None
    assert res.example_inputs.startswith("states (2, 6, 17) float32, actions (2, 6, 4) float32")
    w = res.with_inputs
    assert (w["status"], w["sites"], w["verified"], w["error"]) == ("ok", 4, True, "")  # 2 GPT-2 layers x 2


def test_hand_inputs_that_do_not_run_are_recorded_not_raised(monkeypatch):
    pytest.importorskip("transformers")
    import torch
    from droppath_coverage import hand_inputs

    wrong = {"states": torch.zeros(2, 6, 3)}  # the state width is 17
    monkeypatch.setitem(hand_inputs.BUILDERS, "decision_transformer", lambda config, model: wrong)
    res = sweep.sweep_hf("decision_transformer")
    assert (res.status, res.stage) == ("failed", "inputs")
    w = res.with_inputs
    assert w["status"] == "failed" and w["sites"] is None
    # the sweep's config and the consistent level were both tried before giving up, and both errors said
    assert w["error"].startswith("tiny: forward: ") and " | tiny, consistent: forward: " in w["error"]
    monkeypatch.setitem(hand_inputs.SKIPPED, "decision_transformer", "no tensors serve it")
    res = sweep.sweep_hf("decision_transformer")
    assert res.with_inputs == {"status": "skipped", "error": "no tensors serve it"} and res.example_inputs == ""
