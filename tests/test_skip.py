"""skip_dropped=True: each residual branch runs on the kept samples only.

Exactness is checked against the masked form with the SAME kept samples: a first training pass
skips and records, per branch end, which samples it computed and their multipliers; a second pass
masks with exactly those multipliers. Outputs and every gradient must agree to 1e-10 (relative to
the largest magnitude), in float64 so that what remains is only the summation order of a smaller
batch. Every test also asserts that the branches really skipped (``compute == "skip"`` and fewer
samples computed than the batch), so a silent fall-back to masking cannot pass.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ModelSnapshot, bitwise_equal, eval_output, hook_count
from torch import nn
from training_fixtures import hf_vit, single_thread, timm_vit  # noqa: F401

from droppath_surgery import apply_drop_path, drop_path_report, remove_drop_path, set_drop_path_rate
from droppath_surgery.nested import tensors as _flatten  # output tensors, flattened
from droppath_surgery.nn.skip import SkipDropPath, SkipEntry, SkipState

BATCH = 6


def _loss(out, gen):
    total = 0
    for t in _flatten(out):
        if t.is_floating_point():
            total = total + (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum()
    return total


def _run(model, args, kwargs, seed):
    model.zero_grad(set_to_none=True)
    args = [a.detach().clone().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a for a in args]
    kwargs = {
        k: v.detach().clone().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
        for k, v in kwargs.items()
    }
    torch.manual_seed(seed)
    out = model(*args, **kwargs)
    _loss(out, torch.Generator().manual_seed(7)).backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    grads += [a.grad.clone() for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.grad is not None]
    return [t.detach().clone() for t in _flatten(out)], grads


def _assert_close(got, want, what):
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        scale = max(1.0, b.abs().max().item())
        diff = (a - b).abs().max().item()
        assert diff <= 1e-10 * scale, f"{what} {i}: max |diff| {diff:.3g} (scale {scale:.3g})"


def skip_equals_mask(monkeypatch, model, args=(), kwargs=None, rate=0.5, example_inputs=None):
    """Patch with skip_dropped, then compare a skipping training pass with a masked one that uses
    the same kept samples and multipliers."""
    kwargs = kwargs or {}
    model = model.double()
    args = tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    kwargs = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kwargs.items()}
    report = apply_drop_path(model, rate, schedule="uniform", skip_dropped=True, example_inputs=example_inputs)
    assert report.sites and all(s.compute == "skip" for s in report.sites), report
    model.train()

    drawn = []  # (drop, idx, weights, batch) in the order the branch ends ran
    finish, weights = SkipState.finish, SkipState.weights

    def recording_weights(self, v, last, dtype):
        w = weights(self, v, last, dtype)
        self._test_weights = w
        return w

    def recording_finish(self, y):
        idx, _, _, _, batch = self.pending
        out = finish(self, y)
        drawn.append((self.drop, idx.clone(), self._test_weights.clone(), batch))
        return out

    monkeypatch.setattr(SkipState, "weights", recording_weights)
    monkeypatch.setattr(SkipState, "finish", recording_finish)
    skipped = _run(model, args, kwargs, seed=3)
    monkeypatch.undo()
    assert len(drawn) == len(report.sites)
    assert any(len(idx) < batch for _, idx, _, batch in drawn), "no branch ran on a subset"

    drops = [m for m in model.modules() if isinstance(m, SkipDropPath)]
    queue = list(drawn)

    def replay(module, inputs, output):
        drop, idx, w, batch = queue.pop(0)
        assert drop is module
        x = inputs[0]
        dim = module.batch_dim % x.ndim
        mask = torch.zeros(batch, dtype=x.dtype).index_put((idx,), w.to(x.dtype))
        shape = [1] * x.ndim
        shape[dim] = batch
        return x * mask.view(shape)

    handles = [d.register_forward_hook(replay) for d in drops]
    for d in drops:
        object.__setattr__(d, "_skipping", False)  # entries do nothing: the branch sees the full batch
    masked = _run(model, args, kwargs, seed=3)
    for h in handles:
        h.remove()
    for d in drops:
        d._update_skipping()
    assert not queue
    _assert_close(skipped[0], masked[0], "output")
    _assert_close(skipped[1], masked[1], "gradient")
    return report


def _timm(name, **kw):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=3, **kw)


TIMM = {
    "vit": lambda: timm_vit(),
    "deit": lambda: _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2),
    "beit": lambda: _timm("beit_base_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2),
    "eva": lambda: _timm("eva02_tiny_patch14_224", img_size=28, depth=2),
    "swin": lambda: _timm(
        "swin_tiny_patch4_window7_224", img_size=56, depths=(2, 2), num_heads=(1, 2), embed_dim=16
    ),
}


@pytest.mark.parametrize("family", sorted(TIMM))
def test_timm_blocks_skip_exactly(monkeypatch, family):
    torch.manual_seed(0)
    model = TIMM[family]()
    size = model.patch_embed.img_size
    skip_equals_mask(monkeypatch, model, (torch.randn(BATCH, 3, *size),))


def _hf(kind):
    import transformers as T

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if kind == "vit":
        return hf_vit(), "pixel_values"
    if kind == "clip":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**small, image_size=32, patch_size=8)), "pixel_values"
    if kind == "siglip":
        return T.SiglipVisionModel(T.SiglipVisionConfig(**small, image_size=32, patch_size=8)), "pixel_values"
    if kind == "dinov2":
        return T.Dinov2Model(T.Dinov2Config(**small, image_size=32, patch_size=8)), "pixel_values"
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["vit", "clip", "siglip", "dinov2"])
def test_hf_layers_skip_exactly(monkeypatch, kind):
    torch.manual_seed(0)
    model, key = _hf(kind)
    skip_equals_mask(monkeypatch, model, kwargs={key: torch.randn(BATCH, 3, 32, 32)})


def test_batch_carrying_keyword_arguments_are_subset(monkeypatch):
    """BERT with padding: each layer's attention mask holds the batch and is subset with the stream."""
    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=50,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = T.BertModel(config, add_pooling_layer=False)
    ids = torch.randint(0, 50, (BATCH, 7))
    mask = torch.ones(BATCH, 7, dtype=torch.long)
    mask[::2, 4:] = 0  # padding differs between samples: a wrongly subset mask would show
    example = {"input_ids": ids[:2], "attention_mask": mask[:2]}
    report = skip_equals_mask(monkeypatch, model, kwargs={"input_ids": ids, "attention_mask": mask}, example_inputs=example)
    entries = [e for m in model.modules() if isinstance(m, SkipDropPath) for s in m.skip_states for e in s.entries]
    subset_args = {a.location for e in entries for a in e.args}
    assert (1, "attention_mask") in subset_args, subset_args  # (1, name): a keyword argument
    assert len(report.sites) == 4


class TokenMLP(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 16), nn.Linear(16, dim)

    def forward(self, x, token_mask):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x * token_mask[..., None])))


class MaskedBlock(nn.Module):
    """A block whose branch takes a per-sample mask: ``x + mlp(norm(x), token_mask)``; with
    ``inline=True`` the block applies the mask itself, outside any module call."""

    def __init__(self, dim=8, inline=False):
        super().__init__()
        self.inline = inline
        self.norm = nn.LayerNorm(dim)
        self.mlp = TokenMLP(dim)

    def forward(self, x, token_mask):
        if self.inline:
            return x + self.mlp(self.norm(x) * token_mask[..., None], torch.ones_like(token_mask[:1]))
        return x + self.mlp(self.norm(x), token_mask)


class MaskedNet(nn.Module):
    def __init__(self, inline=False):
        super().__init__()
        self.blocks = nn.ModuleList(MaskedBlock(inline=inline) for _ in range(3))

    def forward(self, x, token_mask):
        for b in self.blocks:
            x = b(x, token_mask)
        return x


def test_sequence_first_transformer_skips_samples_not_tokens(monkeypatch):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=False)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    x = torch.randn(5, BATCH, 16)  # (L, N, D)
    report = skip_equals_mask(monkeypatch, model, (x,), example_inputs=(x[:, :3].double(),))
    assert {s.batch_dim for s in report.sites} == {1}


def test_user_model_with_a_batch_argument(monkeypatch):
    torch.manual_seed(0)
    x, m = torch.randn(BATCH, 4, 8), (torch.rand(BATCH, 4) > 0.3).double()
    skip_equals_mask(monkeypatch, MaskedNet(), (x, m), example_inputs=(x[:3].double(), m[:3]))


def test_batch_tensor_used_outside_module_calls_masks_and_says_why():
    """The block multiplies the branch by the full-batch mask itself: no module call to subset it at."""
    torch.manual_seed(0)
    x, m = torch.randn(3, 4, 8), (torch.rand(3, 4) > 0.3).float()
    report = apply_drop_path(MaskedNet(inline=True), 0.5, skip_dropped=True, example_inputs=(x, m))
    assert [s.compute for s in report.sites] == ["mask"] * 3
    assert all("must match the size of tensor" in n for n in report.notes), report.notes


class Mixing(nn.Module):
    """A branch that mixes samples: its output for one sample depends on the others."""

    def __init__(self, dim=8):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return h + h.mean(0, keepdim=True)


class MixNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"f": Mixing(), "g": nn.Sequential(nn.Linear(8, 8), nn.GELU())}) for _ in range(2))

    def forward(self, x):
        for b in self.blocks:
            x = x + b["f"](x)
            x = x + b["g"](x)
        return x


def test_batch_coupled_branches_mask_and_say_why():
    torch.manual_seed(0)
    model = MixNet()
    # mixing samples is what makes the batch dimension undecidable by tracing: say it
    report = apply_drop_path(
        model, 0.5, schedule="uniform", skip_dropped=True, example_inputs=torch.randn(3, 8), batch_dim=0
    )
    computes = {s.path: s.compute for s in report.sites}
    assert computes == {"blocks.0.f": "mask", "blocks.0.g.1": "skip", "blocks.1.f": "mask", "blocks.1.g.1": "skip"}
    text = "\n".join(report.notes)
    assert "blocks.0.f" in text and "differs from the masked form" in text
    assert "compute" in str(report)


def test_batch_norm_branches_mask_and_say_why():
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    report = apply_drop_path(model, 0.2, skip_dropped=True, example_inputs=torch.randn(2, 3, 32, 32))
    assert report.sites and all(s.compute == "mask" for s in report.sites)
    assert all("batch statistics" in n for n in report.notes) and len(report.notes) == len(report.sites)


def test_branch_that_reshapes_with_the_full_batch_size_masks():
    """HF Swin views its attention input with the batch size read before the branch: skipping would
    fail there, so that branch masks (with the error as the reason) and the MLP branch skips."""
    import transformers as T

    config = T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)
    report = apply_drop_path(T.SwinModel(config), 0.3, schedule="uniform", skip_dropped=True)
    by_branch = {(s.block, s.branch): s.compute for s in report.sites}
    assert by_branch == {(0, 0): "mask", (0, 1): "skip", (1, 0): "mask", (1, 1): "skip"}
    masking = [n for n in report.notes if n.startswith("masks instead")]
    assert len(masking) == 2 and all("is invalid for input of size" in n for n in masking)


class ReshapeWithOuterBatch(nn.Module):
    """timm CSATv2's TransformerBlock: the batch size is read before the branch and the branch output
    is reshaped with it and ``-1`` before its drop path slot, which on a subset gives the full
    batch's row count (no error)."""

    def __init__(self, dim=8):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.drop_path1 = nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):  # (B, C, H, W)
        b, c, h, w = x.shape
        t = self.attn(self.norm(x.flatten(2).transpose(1, 2)))
        x = x + self.drop_path1(t.transpose(1, 2).reshape(b, -1, h, w))
        return x + self.mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_branch_that_returns_the_wrong_number_of_samples_masks():
    model = nn.Sequential(ReshapeWithOuterBatch(), ReshapeWithOuterBatch())
    report = apply_drop_path(
        model, 0.5, schedule="uniform", skip_dropped=True, example_inputs=torch.randn(2, 8, 2, 2)
    )
    by_branch = {(s.block, s.branch): s.compute for s in report.sites}
    assert by_branch == {(0, 0): "mask", (0, 1): "skip", (1, 0): "mask", (1, 1): "skip"}, report
    assert sum("returned 2 samples on dim 0 but ran on 1" in n for n in report.notes) == 2, report.notes  # sample 1 of 2 dropped
    seen = []
    for block in model:
        for part in (block.attn, block.mlp):
            part.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    model.train()
    model(torch.randn(6, 8, 2, 2)).sum().backward()  # attention masks (all 6), MLP skips (3 of 6)
    assert seen == [6, 3, 6, 3]


class NoisyEmbed(nn.Module):
    """Random in eval mode too, before the blocks (ViT-MAE's patch masking draws in every mode)."""

    def __init__(self):
        super().__init__()
        self.flaky = False  # the test turns on noise that no random state controls

    def forward(self, x):
        x = x + torch.rand_like(x)
        if self.flaky:
            self.calls = getattr(self, "calls", 0) + 1
            x = x + self.calls * torch.arange(x.shape[-1])  # not a constant: LayerNorm would remove it
        return x


class TwoBranchBlock(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.g = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.f(x)
        return x + self.g(x)


def test_random_ops_of_the_model_do_not_count_against_skipping():
    """The apply-time check runs every pass from the same random state, so a model that draws random
    numbers in eval mode before its blocks still skips (the first branch was blamed before)."""
    model = nn.Sequential(NoisyEmbed(), TwoBranchBlock(), TwoBranchBlock())
    report = apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True, example_inputs=torch.randn(2, 5, 8))
    assert report.sites and all(s.compute == "skip" for s in report.sites), report


def test_hf_vit_mae_skips_everywhere():
    import transformers as T

    config = T.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    report = apply_drop_path(T.ViTMAEModel(config), 0.3, schedule="uniform", skip_dropped=True)
    assert report.sites and all(s.compute == "skip" for s in report.sites), report


def test_a_model_whose_passes_differ_by_themselves_masks_everywhere(monkeypatch):
    """Noise no random state controls, on during the check only (eval verification passes): no branch
    can be shown exact, so all mask, with the reason (before, the check found no one to blame and
    let every branch after the first skip)."""
    import droppath_surgery.api as api

    model = nn.Sequential(NoisyEmbed(), TwoBranchBlock(), TwoBranchBlock())
    original = api.check_skipping

    def flaky_check(*args, **kwargs):
        model[0].flaky = True
        try:
            return original(*args, **kwargs)
        finally:
            model[0].flaky = False

    monkeypatch.setattr(api, "check_skipping", flaky_check)
    report = apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True, example_inputs=torch.randn(2, 5, 8))
    assert report.sites and all(s.compute == "mask" for s in report.sites), report
    assert len(report.notes) == len(report.sites)
    assert all("does not repeat its outputs" in n for n in report.notes[1:]), report.notes


def test_eval_unchanged_and_exact_undo():
    torch.manual_seed(0)
    model = timm_vit()
    x = torch.randn(3, 3, 32, 32)
    before = eval_output(model, x)
    snap = ModelSnapshot(model)
    report = apply_drop_path(model, 0.4, skip_dropped=True)
    assert report.verified
    assert bitwise_equal(eval_output(model, x), before)
    assert hook_count(model) > snap.hooks  # entry pre-hooks
    assert remove_drop_path(model) == len(report.sites)
    snap.assert_same()
    assert bitwise_equal(eval_output(model, x), before)


def test_reapply_without_skip_removes_entries():
    model = timm_vit()
    apply_drop_path(model, 0.4, skip_dropped=True)
    apply_drop_path(model, 0.4)
    assert not any(isinstance(h, SkipEntry) for m in model.modules() for h in m._forward_pre_hooks.values())
    assert not any(isinstance(m, SkipDropPath) for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"skip_dropped": "yes"}, TypeError, "skip_dropped must be True or False"),
        ({"skip_dropped": True, "kept_count": "exact"}, ValueError, "kept_count must be one of 'fixed', 'random'"),
        ({"skip_dropped": True, "mode": "batch"}, ValueError, "mode='row'"),
        ({"skip_dropped": True, "min_skip_rate": 2.0}, Exception, "min_skip_rate"),
    ],
)
def test_bad_skip_options_leave_the_model_alone(kwargs, error, words):
    model = timm_vit()
    snap = ModelSnapshot(model)
    with pytest.raises(error, match=words):
        apply_drop_path(model, 0.2, **kwargs)
    snap.assert_same()


def _branch_batches(model, x):
    """Batch sizes the MLPs of a timm ViT see in one training pass."""
    seen = []
    hs = [b.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0])) for b in model.blocks]
    model(x)
    for h in hs:
        h.remove()
    return seen


def test_below_min_skip_rate_the_branch_masks_and_rescheduling_switches():
    model = timm_vit()
    report = apply_drop_path(model, 0.05, schedule="uniform", skip_dropped=True, min_skip_rate=0.1)
    assert report.sites and all(s.compute == "mask<min" for s in report.sites)
    assert any("below min_skip_rate=0.1" in n for n in report.notes), report.notes
    model.train()
    x = torch.randn(8, 3, 32, 32)
    assert _branch_batches(model, x) == [8, 8]
    set_drop_path_rate(model, 0.5, schedule="uniform")
    assert _branch_batches(model, x) == [4, 4]  # ceil(8 * 0.5)
    report = drop_path_report(model)
    assert all(s.compute == "skip" for s in report.sites)
    assert not any("min_skip_rate" in n for n in report.notes), report.notes
    set_drop_path_rate(model, 0.0, schedule="uniform")
    assert _branch_batches(model, x) == [8, 8]
    model.eval()
    set_drop_path_rate(model, 0.5, schedule="uniform")
    with torch.no_grad():
        assert _branch_batches(model, x) == [8, 8]


# -- the kept samples -------------------------------------------------------------------------


def _draws(rate, batch, kept_count, trials, dtype=torch.float32):
    drop = SkipDropPath(rate, kept_count=kept_count, min_skip_rate=0.0)
    state = SkipState(drop, 0, "test", ())
    kept = torch.zeros(trials, batch)
    scale = torch.zeros(trials, batch, dtype=torch.float64)
    for t in range(trials):
        state.draw(batch, torch.device("cpu"))
        idx, _, v, last, _ = state.pending
        w = state.weights(v, last, dtype).double()
        state.pending = None
        kept[t, idx] = (w > 0).float()
        scale[t, idx] = w
    return kept, scale


def test_fixed_count_keeps_each_sample_with_probability_exactly_one_minus_p():
    """B * (1 - p) = 6.5: 7 computed, the last kept half the time, so 6 or 7 kept, 6.5 on average.

    Bounds: 4000 trials; per-sample frequency within 5 binomial sigmas (sqrt(.65 * .35 / 4000) =
    0.0075), the mean count within 5 sigmas of 6.5 (sd of the count is 0.5).
    """
    torch.manual_seed(0)
    trials, batch, p = 4000, 10, 0.35
    kept, scale = _draws(p, batch, "fixed", trials)
    counts = kept.sum(1)
    assert set(counts.tolist()) == {6.0, 7.0}
    assert abs(counts.mean().item() - 6.5) < 5 * 0.5 / math.sqrt(trials)
    sigma = math.sqrt(0.65 * 0.35 / trials)
    assert (kept.mean(0) - 0.65).abs().max().item() < 5 * sigma
    # unbiased: E[multiplier] = 1 for every sample (kept ones are scaled by exactly 1 / 0.65)
    assert torch.allclose(scale[scale > 0], torch.tensor(1 / 0.65, dtype=torch.float64), rtol=1e-6)
    assert (scale.mean(0) - 1).abs().max().item() < 5 * sigma / 0.65


def test_fixed_count_is_whole_when_b_times_keep_is_whole():
    torch.manual_seed(0)
    kept, _ = _draws(0.25, 8, "fixed", 200)
    assert set(kept.sum(1).tolist()) == {6.0}


@pytest.mark.parametrize("k", [8, 9, 10])
def test_a_count_above_the_least_stays_exact(monkeypatch, k):
    """Compiled code may compute more than ceil(B (1 - p)) samples (its count comes from a grid); with
    B (1 - p) = 6.5 the first 6 of the k computed are kept, the 7th half the time, the rest weighted 0.

    Forced k = 8, 9, 10 (the least is 7). Bounds, 4000 trials: each sample's keep frequency within 5
    binomial sigmas of 0.65 (sqrt(.65 * .35 / 4000) = 0.0075), the mean kept count within 5 sigmas of
    6.5 (its sd is 0.5); E[output] = x: each element's mean output over the trials within 5 sigmas of
    x (the multiplier is 0 or 1 / 0.65, sd sqrt(.35 / .65) per trial).
    """
    torch.manual_seed(0)
    trials, batch, p = 4000, 10, 0.35
    monkeypatch.setattr(SkipDropPath, "kept_for", lambda self, b: k)
    drop = SkipDropPath(p, min_skip_rate=0.0)
    state = SkipState(drop, 0, "test", ())
    x = torch.randn(batch, 3, dtype=torch.float64)
    kept = torch.zeros(trials, batch)
    total = torch.zeros_like(x)
    for t in range(trials):
        state.draw(batch, torch.device("cpu"))
        idx = state.pending[0]
        assert idx.shape == (k,)
        out = state.finish(x[idx])
        kept[t] = (out != 0).all(1).float()
        total += out
    counts = kept.sum(1)
    assert set(counts.tolist()) == {6.0, 7.0}
    assert abs(counts.mean().item() - 6.5) < 5 * 0.5 / math.sqrt(trials)
    assert (kept.mean(0) - 0.65).abs().max().item() < 5 * math.sqrt(0.65 * 0.35 / trials)
    sigma = math.sqrt(0.35 / 0.65 / trials) * x.abs()
    assert ((total / trials - x).abs() < 5 * sigma).all()


def test_random_count_is_binomial():
    """Independent decisions: counts spread over many values, per-sample rate 0.6 within 5 sigmas."""
    torch.manual_seed(0)
    trials, batch = 3000, 8
    kept, _ = _draws(0.4, batch, "random", trials)
    counts = kept.sum(1)
    assert len(set(counts.tolist())) >= 6
    assert abs(counts.mean().item() - 4.8) < 5 * math.sqrt(batch * 0.24 / trials)
    assert (kept.mean(0) - 0.6).abs().max().item() < 5 * math.sqrt(0.24 / trials)


def test_bf16_multiplier_is_stochastically_rounded_and_unbiased():
    """1 / 0.7 is not a bf16 number: multipliers take its two bf16 neighbours, mean 1 / 0.7 within
    5 sigmas (the spread of the two values is one bf16 ulp at 1.43, 2**-7)."""
    torch.manual_seed(0)
    _, scale = _draws(0.3, 16, "fixed", 1500, dtype=torch.bfloat16)
    values = scale[scale > 0]
    assert len(set(values.tolist())) == 2
    bound = 5 * 2**-7 / 2 / math.sqrt(values.numel())
    assert abs(values.mean().item() - 1 / 0.7) < bound


def test_rate_one_computes_one_sample_weighted_zero():
    torch.manual_seed(0)
    model = timm_vit()
    apply_drop_path(model, 1.0, schedule="uniform", skip_dropped=True, min_skip_rate=0.0)
    model.train()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    assert _branch_batches(model, x) == [1, 1]
    out = model(x)
    assert torch.isfinite(out).all()
    model.eval()


def test_gradient_checkpointing_recomputes_the_same_kept_samples():
    torch.manual_seed(0)
    model = timm_vit()
    apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True)
    model.train()
    x = torch.randn(6, 3, 32, 32)
    plain = _run(model, (x,), {}, seed=11)
    model.set_grad_checkpointing(True)
    checkpointed = _run(model, (x,), {}, seed=11)
    for a, b in zip(plain[0] + plain[1], checkpointed[0] + checkpointed[1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compiles_with_fullgraph_and_fixed_count():
    torch.manual_seed(0)
    model = timm_vit()
    apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True)
    model.train()
    seen = []
    hs = [b.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0])) for b in model.blocks]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 3, 32, 32)
    out = compiled(x)
    out.sum().backward()
    for h in hs:
        h.remove()
    assert seen == [3, 3]  # the hooks ran while tracing, on the subset
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_rate_changes_recompile_only_when_the_kept_count_changes():
    """With kept_count="fixed" the compiled step takes the count as a constant, not the float rate:
    the second step and rates that keep ceil(8 * (1 - p)) recompile nothing, and each change of the
    count compiles once."""
    torch.manual_seed(0)
    model = timm_vit()
    apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True)
    model.train()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(8, 3, 32, 32)
    counts = []
    for rate in (0.5, 0.5, 0.52, 0.55, 0.6, 0.65, 0.7, 0.5):
        set_drop_path_rate(model, rate, schedule="uniform")
        compiled(x).sum().backward()
        counts.append((model.blocks[0].drop_path1.kept_for(8), len(graphs)))
    torch._dynamo.reset()
    assert counts == [(4, 1), (4, 1), (4, 1), (4, 1), (4, 1), (3, 2), (3, 2), (4, 3)]


BATCH_SIZES = (4, 4, 6, 8, 8, 12, 5)


def _frames_compiled(model, dynamic):
    """Frames dynamo compiles for training steps of ``model`` at ``BATCH_SIZES``, and the compiled model."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, dynamic=dynamic)
    for b in BATCH_SIZES:
        compiled(torch.randn(b, 3, 32, 32)).sum().backward()
    return counter.frame_count, compiled


@pytest.mark.parametrize("dynamic", [None, True])
def test_batch_size_changes_compile_no_more_frames_than_unpatched(dynamic):
    """Under compile the kept count is integer arithmetic on the batch size, which a symbolic size takes:
    a frame dynamic in the batch serves every size with one graph (measured, both settings: 2 frames
    patched and unpatched; before, the count was a constant per size and every block broke the graph
    once the batch was dynamic: 23 and 29 frames and the recompile limit hit). A new size after that
    compiles nothing; the compiled draw ran at it (``_last_batch``, a side effect of the compiled code)."""
    torch.manual_seed(0)
    plain = timm_vit()
    model = timm_vit()
    model.load_state_dict(plain.state_dict())
    report = apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True)
    assert report.sites and all(s.compute == "skip" for s in report.sites)
    plain.train()
    model.train()
    torch._dynamo.reset()
    try:
        unpatched, _ = _frames_compiled(plain, dynamic)
        torch._dynamo.reset()
        patched, compiled = _frames_compiled(model, dynamic)
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled(torch.randn(7, 3, 32, 32)).sum().backward()
    finally:
        torch._dynamo.reset()
    assert patched <= unpatched, (patched, unpatched)
    assert all(d._last_batch == 7 for d in model.modules() if isinstance(d, SkipDropPath))


def test_copies_and_pickles_keep_skipping():
    import copy
    import io

    torch.manual_seed(0)
    model = timm_vit()
    apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True)
    x = torch.randn(8, 3, 32, 32)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        other.train()
        assert _branch_batches(other, x) == [4, 4]
        entries = [h for m in other.modules() for h in m._forward_pre_hooks.values() if isinstance(h, SkipEntry)]
        drops = {id(m) for m in other.modules() if isinstance(m, SkipDropPath)}
        assert entries and all(id(e.state.drop) in drops for e in entries)  # the copy's own DropPaths
    model.train()
    assert _branch_batches(model, x) == [4, 4]


@pytest.mark.parametrize("kept_count, syncs", [("fixed", False), ("random", True)])
def test_fixed_count_makes_no_host_synchronizing_op(kept_count, syncs):
    """Ops that would synchronize with the device (reading a value to the host: ``.item()``,
    ``nonzero``) are absent from a skipping training step with kept_count="fixed", and present with
    "random" (which shows the check can see them)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = timm_vit()
    apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True, kept_count=kept_count)
    model.train()
    x = torch.randn(6, 3, 32, 32)
    with Ops() as ops:
        model(x).sum().backward()
    found = ops.names & {"_local_scalar_dense", "nonzero", "item"}
    assert bool(found) == syncs, found
    assert "topk" in ops.names if kept_count == "fixed" else "nonzero" in ops.names


def test_exactness_check_costs_one_pass_when_skipping_is_exact(monkeypatch):
    """The check compares one skipping pass with the eval pass that verification ran (no pass of its
    own for the reference); where the model couples samples outside the skipping branches it adds the
    masked form as the reference (MixNet: its mixing branches mask, and carry the dropped sample)."""
    import droppath_surgery.api as api

    passes = []
    original = api.check_skipping
    monkeypatch.setattr(api, "check_skipping", lambda *a, **k: passes.append(original(*a, **k)) or passes[-1])
    torch.manual_seed(0)
    report = apply_drop_path(timm_vit(), 0.5, schedule="uniform", skip_dropped=True)
    assert report.sites and all(s.compute == "skip" for s in report.sites)
    report = apply_drop_path(timm_vit(), 0.5, schedule="uniform", skip_dropped=True, verify=False)
    assert all(s.compute == "skip" for s in report.sites)
    apply_drop_path(MixNet(), 0.5, schedule="uniform", skip_dropped=True, example_inputs=torch.randn(3, 8), batch_dim=0)
    assert passes[0] == 1  # the skipping pass only
    assert passes[1] == 2  # without verification, the eval pass is the check's own
    assert passes[2] >= 3  # skipping, masked reference, and a repeat after each disarmed branch
