"""The public API on a small model: apply, re-apply, set rate, report, remove, verify, atomicity."""

import copy

import pytest
import torch
from helpers import Block, ModelSnapshot, TinyTransformer, bitwise_equal, eval_output, hook_count
from scipy.stats import binomtest
from torch import nn

from droppath_surgery import (
    DropPath,
    ExampleInputsError,
    InvalidRateError,
    NoResidualBranchError,
    NotPatchedError,
    ScheduleError,
    UnsupportedModelError,
    VerificationError,
    apply_drop_path,
    drop_path_report,
    is_patched,
    remove_drop_path,
    set_drop_path_rate,
)


@pytest.fixture
def model():
    return TinyTransformer(depth=4)


@pytest.fixture
def x():
    return torch.randn(2, 5, 8)


def drop_paths(model):
    return [m for m in model.modules() if isinstance(m, DropPath)]


def test_apply_patches_every_branch_and_eval_output_is_bitwise_unchanged(model, x):
    before = eval_output(model, x)
    report = apply_drop_path(model, 0.3, example_inputs=x)
    assert len(report.sites) == 8 and report.verified is True
    assert [s.rate for s in report.sites] == pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    assert bitwise_equal(before, eval_output(model, x))
    assert len(drop_paths(model)) == 8


def test_report_prints_a_readable_table(model, x):
    text = str(apply_drop_path(model, 0.1, example_inputs=x))
    lines = text.splitlines()
    assert "8 branches in 4 blocks" in lines[0] and "verified bitwise unchanged" in lines[0]
    assert lines[1].split()[:3] == ["block", "branch", "rate"]
    assert "blocks.3.mlp.2" in text and "hook Linear" in text and "0.1000" in text


def test_remove_is_an_exact_undo(model, x):
    before_out = eval_output(model, x)
    snap = ModelSnapshot(model)
    apply_drop_path(model, 0.2, example_inputs=x)
    assert is_patched(model)
    assert remove_drop_path(model) == 8
    # the PEFT unload checklist: no added modules, same objects, same state_dict, same outputs
    snap.assert_same()
    assert not drop_paths(model) and not is_patched(model)
    assert bitwise_equal(before_out, eval_output(model, x))
    assert remove_drop_path(model) == 0  # a second call does nothing
    snap.assert_same()


def test_remove_restores_the_same_placeholder_objects():
    class B(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop_path = nn.Identity()

        def forward(self, x):
            return x + self.drop_path(self.fc(torch.relu(x)))

    model = nn.Sequential(B(), B())
    originals = [b.drop_path for b in model]
    apply_drop_path(model, 0.1, example_inputs=torch.randn(2, 4))
    assert all(isinstance(b.drop_path, DropPath) for b in model)
    remove_drop_path(model)
    assert all(b.drop_path is o for b, o in zip(model, originals))


def test_applying_again_reschedules_instead_of_stacking(model, x):
    apply_drop_path(model, 0.1, example_inputs=x)
    report = apply_drop_path(model, 0.4, schedule="uniform", example_inputs=x)
    assert len(drop_paths(model)) == 8
    assert all(s.rate == 0.4 for s in report.sites)
    assert not any(isinstance(c, DropPath) for d in drop_paths(model) for c in d.children())
    remove_drop_path(model)
    assert not drop_paths(model) and hook_count(model) == 0


def test_set_drop_path_rate_reschedules_without_running_the_model(model, x):
    apply_drop_path(model, 0.1, example_inputs=x)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    set_drop_path_rate(model, 0.6)
    assert calls == []
    handle.remove()
    report = drop_path_report(model)
    assert [s.rate for s in report.sites] == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    assert [d.rate for d in drop_paths(model)] == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    set_drop_path_rate(model, schedule=[0.0, 0.1, 0.2, 0.3])
    assert drop_path_report(model).schedule == "explicit list"
    assert [d.rate for d in drop_paths(model)] == pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3])


def test_set_drop_path_rate_validates_before_changing_anything(model, x):
    apply_drop_path(model, 0.1, example_inputs=x)
    rates = [d.rate for d in drop_paths(model)]
    with pytest.raises(ScheduleError):
        set_drop_path_rate(model, schedule=[0.1, 0.2])
    with pytest.raises(InvalidRateError):
        set_drop_path_rate(model, 1.5)
    assert [d.rate for d in drop_paths(model)] == rates


def test_report_and_set_rate_need_a_patched_model(model):
    with pytest.raises(NotPatchedError, match="apply_drop_path"):
        drop_path_report(model)
    with pytest.raises(NotPatchedError):
        set_drop_path_rate(model, 0.1)


def test_filter_fn_chooses_branches_and_keeps_block_numbering(model, x):
    report = apply_drop_path(model, 0.3, example_inputs=x, filter_fn=lambda m, fqn: "mlp" in fqn)
    assert [s.path for s in report.sites] == [f"blocks.{i}.mlp.2" for i in range(4)]
    assert [s.rate for s in report.sites] == pytest.approx([0, 0.1, 0.2, 0.3])
    filtered = [s for s in report.skipped if "filter_fn" in s.reason]
    assert [s.path for s in filtered] == [f"blocks.{i}.attn" for i in range(4)]


def test_surgery_leaves_rng_flags_and_hooks_alone(model, x):
    model.train()
    model.blocks[1].eval()  # mixed flags must come back exactly
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    hooks = hook_count(model)
    apply_drop_path(model, 0.1, example_inputs=x)
    assert torch.equal(rng, torch.get_rng_state())
    original_modules = [m for m in model.modules() if not isinstance(m, DropPath)]
    assert [m.training for m in original_modules] == flags
    # each new DropPath takes the train/eval flag of the module it attaches to
    for block in model.blocks:
        assert block.mlp[2].surgery_drop_path.training == block.mlp[2].training
    assert hook_count(model) == hooks + 8  # exactly one forward hook per hooked branch end, none from probing


def test_every_site_is_applied_exactly_once_per_training_forward(model, x):
    apply_drop_path(model, 0.5, example_inputs=x)
    counts = {}
    for i, d in enumerate(drop_paths(model)):
        d.register_forward_hook(lambda m, a, o, i=i: counts.__setitem__(i, counts.get(i, 0) + 1))
    model.train()
    model(x)
    assert counts == {i: 1 for i in range(8)}


def test_per_site_drop_rate_in_training_passes_binomial_test(model):
    # Uniform p = 0.3 at all 8 sites; record per-sample drop decisions at every site over
    # 20 forwards of batch 256 (n = 5120 per site). Two-sided binomial test at 1e-4 per site.
    apply_drop_path(model, 0.3, schedule="uniform", example_inputs=torch.randn(2, 5, 8))
    drops = {}
    for i, d in enumerate(drop_paths(model)):
        d.register_forward_hook(
            lambda m, a, o, i=i: drops.setdefault(i, []).append((o == 0).flatten(1).all(1) & (a[0] != 0).flatten(1).any(1))
        )
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(256, 5, 8))
    for i, seen in drops.items():
        dropped = torch.cat(seen)
        k, n = int(dropped.sum()), dropped.numel()
        assert binomtest(k, n, 0.3).pvalue > 1e-4, f"site {i}: {k}/{n}"


def test_bf16_model_small_rate_per_site_binomial():
    # bf16 weights and activations at p = 0.004: n = 40960 samples per site, ~164 expected drops.
    model = TinyTransformer(depth=2, dim=8).to(torch.bfloat16)
    apply_drop_path(model, 0.004, schedule="uniform", example_inputs=torch.randn(2, 3, 8, dtype=torch.bfloat16))
    drops = {}
    for i, d in enumerate(drop_paths(model)):
        d.register_forward_hook(lambda m, a, o, i=i: drops.setdefault(i, []).append((o == 0).flatten(1).all(1)))
    model.train()
    with torch.no_grad():
        for _ in range(10):
            out = model(torch.randn(4096, 3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    for i, seen in drops.items():
        dropped = torch.cat(seen)
        k, n = int(dropped.sum()), dropped.numel()
        assert binomtest(k, n, 0.004).pvalue > 1e-4, f"site {i}: {k}/{n}"


def test_deepcopy_keeps_drop_path_and_remove_works_on_the_copy(model, x):
    apply_drop_path(model, 0.2, example_inputs=x)
    twin = copy.deepcopy(model)
    assert len(drop_paths(twin)) == 8 and is_patched(twin)
    assert remove_drop_path(twin) == 8 and hook_count(twin) == 0
    assert len(drop_paths(model)) == 8


# --- bad input: clear errors, model exactly as it was ----------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rate=-0.1), InvalidRateError, r"\[0, 1\].*-0.1"),
        (dict(rate=1.5), InvalidRateError, r"\[0, 1\].*1.5"),
        (dict(rate=float("nan")), InvalidRateError, r"\[0, 1\].*nan"),
        (dict(schedule=[0.1, 0.2]), ScheduleError, "4 blocks.*length 4"),
        (dict(schedule="cosine"), ScheduleError, "unknown schedule 'cosine'"),
        (dict(schedule=lambda i, n: 2.0), ScheduleError, "callable"),
        (dict(filter_fn=lambda m, fqn: False), NoResidualBranchError, "filter_fn"),
        (dict(filter_fn="mlp"), TypeError, "filter_fn must be a callable"),
        (dict(mode="tokens"), ValueError, "mode"),
        (dict(example_inputs=torch.randn(2, 5, 9)), ExampleInputsError, "failed to run"),
        (dict(example_inputs="pixels"), ExampleInputsError, "must be a tensor"),
    ],
)
def test_errors_are_clear_and_leave_the_model_unchanged(model, x, kwargs, error, match):
    kwargs.setdefault("example_inputs", x)
    snap = ModelSnapshot(model)
    with pytest.raises(error, match=match):
        apply_drop_path(model, **kwargs)
    snap.assert_same()


def test_errors_on_a_patched_model_leave_the_previous_patch_in_place(model, x):
    apply_drop_path(model, 0.1, example_inputs=x)
    snap = ModelSnapshot(model)
    with pytest.raises(ScheduleError):
        apply_drop_path(model, schedule=[0.1], example_inputs=x)
    snap.assert_same()
    assert [s.rate for s in drop_path_report(model).sites][-1] == pytest.approx(0.1)


def test_non_module_and_wrapped_models_are_rejected():
    with pytest.raises(UnsupportedModelError, match="must be a torch.nn.Module"):
        apply_drop_path(lambda x: x, 0.1)
    with pytest.raises(UnsupportedModelError, match="torch.compile"):
        apply_drop_path(torch.compile(TinyTransformer()), 0.1)


def test_model_without_known_inputs_asks_for_example_inputs(model):
    snap = ModelSnapshot(model)
    with pytest.raises(ExampleInputsError, match="example_inputs="):
        apply_drop_path(model, 0.1)
    snap.assert_same()


def test_verification_catches_a_patch_that_changes_eval_output(model, x, monkeypatch):
    # A DropPath that (wrongly) scales in eval mode must be caught, undone and reported.
    def broken_forward(self, inp):
        return inp * 1.5

    monkeypatch.setattr(DropPath, "forward", broken_forward)
    snap = ModelSnapshot(model)
    with pytest.raises(VerificationError, match="elements differ"):
        apply_drop_path(model, 0.1, example_inputs=x)
    snap.assert_same()


def test_verify_false_skips_the_check(model, x, monkeypatch):
    monkeypatch.setattr(DropPath, "forward", lambda self, inp: inp * 1.5)
    report = apply_drop_path(model, 0.1, example_inputs=x, verify=False)
    assert report.verified is None and len(report.sites) == 8


def test_failure_in_the_middle_of_attaching_leaves_the_model_unchanged(model, x):
    # The third block's mlp output layer already has the attribute drop path would use.
    object.__setattr__(model.blocks[2].mlp[2], "surgery_drop_path", "taken")
    snap = ModelSnapshot(model)
    with pytest.raises(UnsupportedModelError, match="already has an attribute 'surgery_drop_path'"):
        apply_drop_path(model, 0.1, example_inputs=x)
    snap.assert_same()
    assert not drop_paths(model)


def test_a_patched_model_keeps_its_schedule_until_a_new_one_is_given(model, x):
    from droppath_surgery.training import Constant, DropPathScheduler

    apply_drop_path(model, 0.2, schedule="uniform", example_inputs=x)
    set_drop_path_rate(model, 0.3)  # DeiT III / DINOv2 users keep their uniform rates
    assert {s.rate for s in drop_path_report(model).sites} == {0.3}
    assert drop_path_report(model).schedule == "uniform"
    DropPathScheduler(model, Constant(0.4))
    assert {s.rate for s in drop_path_report(model).sites} == {0.4}
    set_drop_path_rate(model, 0.3, schedule="linear")  # a schedule given becomes the model's
    set_drop_path_rate(model, 0.6)
    assert [s.rate for s in drop_path_report(model).sites] == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    rates = [0.0, 0.1, 0.2, 0.3]
    set_drop_path_rate(model, schedule=rates)
    rates[3] = 0.9  # the model keeps its own copy
    set_drop_path_rate(model, 0.5)  # a list gives the rates itself
    assert [s.rate for s in drop_path_report(model).sites][-1] == pytest.approx(0.3)
    with pytest.raises(ScheduleError, match="gives the rates itself.*pass per_layer="):
        DropPathScheduler(model, Constant(0.4))
    DropPathScheduler(model, Constant(0.4), per_layer="efficientnet")  # every schedule name works here
    assert [s.rate for s in drop_path_report(model).sites][-1] == pytest.approx(0.3)  # 0.4 * 3 / 4


def test_report_counts_branches_and_modules_and_exports_plain_data():
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    model = ViTModel(config)
    report = apply_drop_path(model, 0.2)
    # transformers' ViTLayer applies one `dropout` to both branches: 6 branches, 3 DropPath modules.
    assert len(report.sites) == 6 and report.num_modules == 3
    assert "6 branches in 3 blocks at 3 DropPath modules (one module ends several branches)" in str(report)
    assert report.sites[-1].rate == 0.2  # the float asked for, not float32's 0.20000000298023224
    data = report.to_dict()
    assert data["num_branches"] == 6 and data["num_modules"] == 3 and data["verified"] is True
    assert data["sites"][0]["path"] == report.sites[0].path and len(report.records()) == 6
    assert set(data["sites"][0]) >= {"path", "block", "rate", "kind", "batch_dim", "compute", "stack"}
    page = report._repr_html_()
    assert page.count("<tr>") == 7 and f"<td>{report.sites[-1].path}</td>" in page
    assert remove_drop_path(model) == report.num_modules


class _TextAndAudio(nn.Module):
    """A text stack that always runs and an audio stack that runs only when audio is passed, beside a list of
    linear heads that never runs (no blocks: nothing to say about it)."""

    def __init__(self) -> None:
        super().__init__()
        self.text = TinyTransformer(depth=2)
        self.audio = nn.ModuleList([Block(16) for _ in range(3)])
        self.unused_heads = nn.ModuleList([nn.Linear(16, 2) for _ in range(3)])

    def forward(self, x, audio=None):
        out = self.text(x)
        if audio is not None:
            for blk in self.audio:
                audio = blk(audio)
            out = out + audio.mean((1, 2))[:, None]
        return out


def test_stacks_of_blocks_the_example_inputs_never_ran_are_reported_and_warned_about():
    model = _TextAndAudio()
    x = torch.randn(2, 5, 8)
    with pytest.warns(UserWarning, match=r"1 stack of repeated blocks did not run on the example inputs \(audio \(3 x Block\)\)"):
        report = apply_drop_path(model, 0.1, example_inputs=(x,))
    assert report.not_run == ("audio (3 x Block)",)
    assert report.to_dict()["not_run"] == ["audio (3 x Block)"]
    assert drop_path_report(model).not_run == ("audio (3 x Block)",)  # read back off the patched model
    assert all(s.path.startswith("text.") for s in report.sites)
    assert any("did not run" in n for n in report.notes) and "did not run" in str(report)
    remove_drop_path(model)
    # inputs that run the audio stack: it is patched, and nothing is said
    full = apply_drop_path(model, 0.1, example_inputs={"x": x, "audio": torch.randn(2, 4, 16)})
    assert full.not_run == () and not any("did not run" in n for n in full.notes)
    assert sum(s.path.startswith("audio.") for s in full.sites) == 6


def test_a_model_whose_only_blocks_did_not_run_names_them_in_its_error():
    class OnlyAudio(_TextAndAudio):
        def forward(self, x, audio=None):
            return self.text.embed(x) if audio is None else super().forward(x, audio)

    with pytest.raises(NoResidualBranchError, match=r"on the example inputs \(text.blocks \(2 x Block\), audio \(3 x Block\) did not run\)"):
        apply_drop_path(OnlyAudio(), 0.1, example_inputs=(torch.randn(2, 5, 8),))
