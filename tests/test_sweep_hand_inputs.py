"""The sweep's retry with hand-made ``example_inputs=`` (scripts/droppath_coverage/hand_inputs.py) for the
Hugging Face types whose automatic inputs cannot be built: the zero-argument record is kept, the outcome with
the hand inputs recorded beside it, and the rendered summary counts them apart."""

from __future__ import annotations

import pytest
from droppath_coverage import sweep, sweep_render
from training_fixtures import single_thread  # noqa: F401  (autouse: one torch thread, as the sweep)


def _row(name, stage="", status="ok", with_inputs=None, **extra):
    row = {"library": "hf", "name": name, "family": name, "cls": "M", "build": "tiny", "device": "cpu",
           "params": 1, "status": status, "stage": stage, "error": "ExampleInputsError: pass example_inputs="
           if stage == "inputs" else "", "sites": None if stage else 4, "blocks": None, "layers": 2,
           "verified": None if stage else True, "native": None, "site_parity": None, "rate_parity": None,
           "carried": None, "parity_reason": "", "skipped": [], "not_run": None if stage else [], "note": "",
           "patch_s": None, "total_s": 1.0}
    if with_inputs is not False:
        row |= {"example_inputs": "x (2, 4) float32" if with_inputs else "", "with_inputs": with_inputs}
    return row | extra


def test_the_summary_counts_the_types_that_patch_and_verify_with_hand_inputs_apart():
    rows = [
        _row("plain"),
        _row("a", "inputs", "failed", {"status": "ok", "build": "tiny", "sites": 5, "verified": True, "error": ""}),
        _row("b", "inputs", "failed", {"status": "failed", "build": "tiny", "sites": None, "verified": None,
                                       "error": "apply: BatchDimError: ..."}),
        _row("c", "inputs", "failed", {"status": "skipped", "error": "takes an inference_session"}),
        _row("d", "inputs", "failed", None),  # no hand inputs written for it
        _row("e", "forward", "failed", None),  # not an inputs failure: not counted
    ]
    lines = sweep_render.hf_summary(rows)
    assert lines[0].startswith("hf: **1/6 AutoModel types patched with zero arguments**")  # headline unchanged
    line = next(x for x in lines if "example_inputs=" in x)
    assert "1 of the 4 types that need `example_inputs=` patch and verify with them" in line
    assert "1 fail with them, 1 skipped" in line and "1 without hand inputs" in line
    table = "\n".join(sweep_render.sections({"hf": rows, "hf-heads": [], "timm": []}, level=2))
    assert "## Hugging Face types that need `example_inputs=`" in table
    assert "| a | x (2, 4) float32 | tiny | ok | 5 | yes |  |" in table
    assert "| d | - | - | no hand inputs | - | - |  |" in table


def test_results_of_a_sweep_before_the_retry_render_as_they_did():
    rows = [_row("plain"), _row("a", "inputs", "failed", with_inputs=False)]  # no with_inputs key at all
    assert not any("example_inputs=" in line for line in sweep_render.hf_summary(rows))
    text = "\n".join(sweep_render.sections({"hf": rows, "hf-heads": [], "timm": []}, level=2))
    assert "types that need `example_inputs=`" not in text


def test_a_type_without_automatic_inputs_is_retried_with_its_hand_inputs():
    pytest.importorskip("transformers")
    res = sweep.sweep_hf("decision_transformer")
    # the zero-argument record stays what it was: the headline counts those runs only
    assert (res.status, res.stage) == ("failed", "inputs") and res.error.startswith("ExampleInputsError")
    assert res.sites is None and res.verified is None
    assert res.example_inputs.startswith("states (2, 6, 17) float32, actions (2, 6, 4) float32")
    w = res.with_inputs
    assert (w["status"], w["sites"], w["verified"], w["error"]) == ("ok", 4, True, "")  # 2 GPT-2 layers x 2


def test_a_type_whose_automatic_inputs_do_not_fit_its_forward_is_retried_with_its_hand_inputs(monkeypatch):
    pytest.importorskip("transformers")
    import torch
    import transformers as T
    from droppath_coverage import hand_inputs

    class PerChannel(T.BertModel):
        """Takes ids per channel, (B, L, C), which no config field says: its automatic (B, L) ids build but do not
        fit its forward (as Dia's decoder ids did before the builder read its decoder config's channels)."""

        __module__ = T.BertModel.__module__  # a transformers model: the builder makes its inputs

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            if input_ids.dim() != 3:
                raise ValueError(f"ids per channel expected, (B, L, C), got {tuple(input_ids.shape)}")
            return super().forward(input_ids=input_ids[..., 0], attention_mask=attention_mask)

    monkeypatch.setattr(sweep, "hf_classes", lambda model_type: (T.BertConfig, PerChannel))
    monkeypatch.setitem(hand_inputs.BUILDERS, "per_channel",
                        lambda config, model: {"input_ids": torch.randint(0, 10, (2, 8, 3))})
    res = sweep.sweep_hf("per_channel")
    assert (res.status, res.stage) == ("failed", "forward") and res.sites is None
    assert res.example_inputs == "input_ids (2, 8, 3) int64"
    w = res.with_inputs
    assert (w["status"], w["verified"], w["error"]) == ("ok", True, "") and w["sites"] == 4  # 2 BERT layers x 2
    rows = [_row("per_channel", "forward", "failed", w), _row("other", "forward", "failed", None)]
    assert sweep_render.hand_inputs_line(rows).startswith("hf: 1 of the 1 types that need `example_inputs=`")
    assert sweep_render.cause_of(rows[0]) == sweep_render.WRONG_INPUTS  # not "shape error on the shrunk config"


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


def test_a_retry_that_runs_out_of_time_keeps_the_zero_argument_record(monkeypatch):
    pytest.importorskip("transformers")
    from droppath_coverage import hand_inputs
    from droppath_coverage.runner import Timeout

    def slow(config, model):
        raise Timeout("timed out after 100 s")  # what the worker's time limit raises in the middle of the retry

    monkeypatch.setitem(hand_inputs.BUILDERS, "decision_transformer", slow)
    res = sweep.sweep_hf("decision_transformer")
    assert (res.status, res.stage) == ("failed", "inputs") and res.error.startswith("ExampleInputsError")
    assert res.with_inputs["status"] == "failed" and res.with_inputs["error"] == "timeout: timed out after 100 s"


def test_the_summary_counts_the_patched_models_apply_drop_path_warned_of_by_kind():
    rows = [
        _row("quiet", warned=[]),
        _row("a", warned=["# stack of repeated blocks did not run on the example inputs (x): fix"]),
        _row("b", warned=["# stacks of repeated blocks did not run on the example inputs (y): fix",
                          "schedule 'linear' gives every branch rate #: it ramps",
                          "# residual branch of blocks left without drop path (z): why"]),
        _row("c", warned=["# residual branches of blocks left without drop path (z): why"]),
        _row("old"),  # recorded before the field: not counted
        _row("f", "inputs", "failed", None, warned=None),
    ]
    line = sweep_render.warned_line("hf", rows)
    assert line.startswith("hf: 3 of the 4 patched models got a warning")
    assert "2 x # residual branch(es) of blocks left without drop path (`b`, `c`)" in line
    assert "2 x # stack(s) of repeated blocks did not run on the example inputs (`a`, `b`)" in line
    assert "1 x schedule 'linear' gives every branch rate # (`b`)" in line
    assert sweep_render.warned_line("hf", [_row("old")]) == ""
    assert any(x.startswith("hf: 3 of the 4 patched") for x in sweep_render.hf_summary(rows))


def test_the_sweep_records_what_apply_drop_path_warned_of():
    import torch
    from helpers import TinyTransformer

    res = sweep.Result("hf", "one")
    # one block (attention and MLP branches): "linear" gives both rate 0
    sweep.patch(res, TinyTransformer(depth=1).eval(), torch.randn(2, 5, 8))
    assert res.sites == 2 and res.warned and "gives every branch rate #" in res.warned[0]
