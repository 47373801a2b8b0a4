"""Packed streams: a tower that runs the rows of several samples as one sequence, split by the
``cu_seqlens`` its blocks are called with (Qwen2-VL's vision tower), is dropped per sample."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import ModelSnapshot, bitwise_equal, eval_output, hook_count
from torch import nn

from droppath_surgery import BatchDimError, DropPath, NoResidualBranchError, apply_drop_path, remove_drop_path

DIM = 16


class _SegmentAttention(nn.Module):
    """Attention within each segment of ``cu_seqlens`` (or over every row, ``leaks=True``)."""

    def __init__(self, leaks: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.leaks = leaks

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.leaks:
            return self.proj(F.scaled_dot_product_attention(q[None], k[None], v[None])[0])
        bounds = cu_seqlens.tolist()
        parts = [
            F.scaled_dot_product_attention(q[None, a:b], k[None, a:b], v[None, a:b])[0] for a, b in zip(bounds[:-1], bounds[1:])
        ]
        return self.proj(torch.cat(parts))


class _Block(nn.Module):
    def __init__(self, leaks: bool = False) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn = _SegmentAttention(leaks)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu_seqlens)
        return x + self.mlp(self.norm2(x))


class _Tower(nn.Module):
    """Patches of all images in one sequence; ``lengths`` rows per image. Blocks in ``windowed`` attend
    within halves of each image (a second, finer boundaries tensor, as Qwen2.5-VL's window blocks)."""

    def __init__(self, depth: int = 4, windowed: tuple[int, ...] = (), leaks: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(12, DIM)
        self.blocks = nn.ModuleList(_Block(leaks) for _ in range(depth))
        self.windowed = windowed

    def forward(self, patches: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        cu = F.pad(lengths.cumsum(0), (1, 0))
        halves = torch.stack([lengths // 2, lengths - lengths // 2], dim=1).flatten()
        cu_windows = F.pad(halves.cumsum(0), (1, 0))
        x = self.embed(patches)
        for i, block in enumerate(self.blocks):
            x = block(x, cu_windows if i in self.windowed else cu)
        return x


LENGTHS = torch.tensor([5, 7, 4, 6])


def _inputs(lengths: torch.Tensor = LENGTHS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(int(lengths.sum()), 12, generator=gen), lengths


@pytest.mark.parametrize("rows_first", [True, False], ids=["patches-first", "lengths-first"])
def test_packed_tower_is_dropped_per_sample_and_eval_output_is_bitwise_unchanged(rows_first):
    torch.manual_seed(0)
    model = _Tower().eval()
    patches, lengths = _inputs()
    before = eval_output(model, patches, lengths)
    # Patches first, their rows read as a batch would be dropped per patch: the boundaries say otherwise.
    example = (patches, lengths) if rows_first else {"lengths": lengths, "patches": patches}
    report = apply_drop_path(model, 0.3, schedule="uniform", example_inputs=example)
    assert len(report.sites) == 8 and report.skipped == ()
    assert all(s.packed and s.batch_dim == 0 for s in report.sites)
    assert "0 (packed)" in str(report)
    drops = [m for m in model.modules() if isinstance(m, DropPath)]
    assert len(drops) == 8 and all(d.packed for d in drops) and "packed=True" in repr(drops[0])
    assert bitwise_equal(before, eval_output(model, patches, lengths))


def test_each_segment_shares_one_decision_and_the_drop_rate_passes_a_binomial_test():
    torch.manual_seed(0)
    model = _Tower(depth=2)
    apply_drop_path(model, 0.25, schedule="uniform", example_inputs=_inputs())
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    cu_now: list[torch.Tensor] = []
    for drop in (m for m in model.modules() if isinstance(m, DropPath)):
        drop.register_forward_hook(lambda mod, args, out: seen.append((args[0], out, mod.segments)))
    model.train()
    # Sizes the model was not traced with: the boundaries come from each call.
    lengths = torch.tensor([3, 9, 1, 6, 2, 4])
    dropped = total = 0
    for step in range(60):
        seen.clear()
        patches, _ = _inputs(lengths, seed=step)
        with torch.no_grad():
            model(patches, lengths)
        assert len(seen) == 4
        for x, out, cu in seen:
            cu_now.append(cu)
            for a, b in zip(cu.tolist()[:-1], cu.tolist()[1:]):
                zero = bool((out[a:b] == 0).all())
                assert zero or torch.allclose(out[a:b], x[a:b] / 0.75), "rows of one sample got different decisions"
                dropped += zero
                total += 1
    assert all(torch.equal(cu, F.pad(lengths.cumsum(0), (1, 0))) for cu in cu_now)
    # 1,440 segment draws at rate 0.25: 4.5 standard deviations either side (0.051).
    bound = 4.5 * math.sqrt(0.25 * 0.75 / total)
    assert abs(dropped / total - 0.25) < bound


def test_boundaries_that_do_not_cover_the_rows_are_an_error():
    model = _Tower(depth=1)
    apply_drop_path(model, 0.5, schedule="uniform", example_inputs=_inputs())
    drop = model.blocks[0].attn.surgery_drop_path
    drop.train()
    drop.segments = torch.tensor([0, 3, 5])
    with pytest.raises(BatchDimError, match="end at row 5, but the branch output has 8 rows"):
        drop(torch.randn(8, DIM))
    drop.segments = None
    with pytest.raises(BatchDimError, match="needs their boundaries"):
        drop(torch.randn(8, DIM))


def test_window_blocks_with_finer_boundaries_are_left_out_with_a_warning():
    torch.manual_seed(0)
    model = _Tower(depth=4, windowed=(0, 1, 2))
    with pytest.warns(UserWarning, match="6 residual branches of blocks left without drop path .*finer boundaries"):
        report = apply_drop_path(model, 0.3, example_inputs=_inputs())
    assert [s.block_path for s in report.sites] == ["blocks.3", "blocks.3"]
    assert {s.reason for s in report.skipped} == {
        next(s.reason for s in report.skipped)
    } and "attention windows" in report.skipped[0].reason
    assert "dropping per window would drop parts of a sample" in str(report)


def test_equal_boundaries_of_two_tensors_tell_nothing_and_the_error_says_so():
    # Windows as large as the images: the two tensors are equal here, and at other sizes would not be.
    torch.manual_seed(0)

    class SameWindows(_Tower):
        def forward(self, patches, lengths):
            cu = F.pad(lengths.cumsum(0), (1, 0))
            cu_windows = cu.clone()  # another tensor, as a window index would be
            x = self.embed(patches)
            for i, block in enumerate(self.blocks):
                x = block(x, cu_windows if i in self.windowed else cu)
            return x

    model = SameWindows(depth=2, windowed=(0,))
    snapshot = ModelSnapshot(model)
    with pytest.raises(BatchDimError, match="none strictly coarser .*pass larger images"):
        apply_drop_path(model, 0.3, example_inputs={"lengths": LENGTHS, "patches": _inputs()[0]})
    snapshot.assert_same()


def test_boundaries_the_attention_does_not_keep_apart_are_not_taken_as_samples():
    torch.manual_seed(0)
    model = _Tower(depth=2, leaks=True)
    snapshot = ModelSnapshot(model)
    with pytest.raises(BatchDimError, match="did not confirm them as samples"):
        apply_drop_path(model, 0.3, example_inputs={"lengths": LENGTHS, "patches": _inputs()[0]})
    snapshot.assert_same()
    # Patches first: their rows would pass as a batch, but the boundaries show they are not samples.
    with pytest.raises(NoResidualBranchError, match=r"residual merges in _Tower but no residual branch that can carry "
                       r"drop path: the branch runs on a packed stream .*did not confirm.* \(blocks\.0\.attn, ") as err:
        apply_drop_path(model, 0.3, example_inputs=_inputs())
    assert str(err.value).count("blocks.0.attn,") == 1  # each reason once, each branch end once under it
    assert "did not run" not in str(err.value)  # every block ran: no hint that some did not
    snapshot.assert_same()


def test_remove_is_an_exact_undo_of_the_block_pre_hooks():
    torch.manual_seed(0)
    model = _Tower(depth=2)
    snapshot = ModelSnapshot(model)
    apply_drop_path(model, 0.3, example_inputs=_inputs())
    assert len(model.blocks[0]._forward_pre_hooks) == 2  # one per branch DropPath
    copied = copy.deepcopy(model)  # the copy's pre-hooks feed the copy's DropPaths, and go with its undo
    copied.train()
    with torch.random.fork_rng():  # its draws leave the global RNG, which the snapshot compares, alone
        assert copied(*_inputs(torch.tensor([3, 4, 5]))).shape == (12, DIM)
    remove_drop_path(copied)
    assert hook_count(copied) == 0 and hook_count(model) > 0
    remove_drop_path(model)
    snapshot.assert_same()


def test_skip_mode_masks_packed_branches_and_says_why():
    torch.manual_seed(0)
    model = _Tower(depth=2)
    report = apply_drop_path(model, 0.3, schedule="uniform", skip_dropped=True, example_inputs=_inputs())
    assert {s.compute for s in report.sites} == {"mask"}
    assert "packed stream" in str(report)
    model.train()
    patches, lengths = _inputs(torch.tensor([4, 4, 4]))
    assert model(patches, lengths).shape == (12, DIM)


def test_packed_on_the_meta_device_asks_for_a_real_device():
    with torch.device("meta"):
        model = _Tower(depth=1, leaks=True)  # the segment loop reads values, which meta tensors have not
        patches = torch.randn(22, 12)
    with pytest.raises(BatchDimError, match="meta device has no values"):
        apply_drop_path(model, 0.3, example_inputs={"lengths": LENGTHS.to("meta"), "patches": patches})


class _FrameBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (frames, tokens, DIM): attention within each frame
        x = x + self.proj(torch.softmax(x @ x.transpose(1, 2) / 4, dim=-1) @ x)
        return x + self.mlp(x)


class _FoldedEncoder(nn.Module):
    """A video model's layers on rows folded into the batch, from a clip ``(B, T, tokens, DIM)``: ``"frames"`` runs
    every frame of every clip on its own, ``B x T`` rows (clip-major); ``"frames_major"`` the same ``T x B`` (a
    sample's rows ``B`` apart, as DepthPro runs its patches); ``"shuffled"`` clip-major rows in a fixed
    shuffled order (a sample's rows neither consecutive nor ``B`` apart); ``"positions"`` each token
    position's frames, ``(B x tokens, T, DIM)``."""

    def __init__(self, fold: str = "frames") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_FrameBlock() for _ in range(2))
        self.fold = fold

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        b, t, n, d = clip.shape
        if self.fold == "positions":
            x = clip.permute(0, 2, 1, 3).reshape(b * n, t, d)
        else:
            x = (clip.transpose(0, 1) if self.fold == "frames_major" else clip).reshape(-1, n, d)
        if self.fold == "shuffled":
            x = x[torch.randperm(b * t, generator=torch.Generator().manual_seed(0))]
        for block in self.blocks:
            x = block(x)
        return x


def test_frames_folded_into_the_batch_share_their_clips_decision():
    torch.manual_seed(0)
    model = _FoldedEncoder("frames")
    report = apply_drop_path(model, 0.5, schedule="uniform", example_inputs=torch.randn(2, 3, 5, DIM))
    assert [s.rows_per_sample for s in report.sites] == [3] * 4 and "0 (3 rows a sample)" in str(report)
    model.train()
    seen = []
    model.blocks[0].mlp.register_forward_hook(lambda m, a, out: seen.append(out))
    model(torch.randn(64, 3, 5, DIM))
    dropped = (seen[0] == 0).flatten(1).all(1).view(64, 3)
    assert (dropped.all(1) | (~dropped).all(1)).all(), "frames of one clip got different decisions"
    assert 10 < int(dropped.all(1).sum()) < 54  # 64 clips at 0.5: mean 32, sd 4


def test_frames_folded_frame_major_share_their_clips_decision_b_apart():
    # Row j * B + s is frame j of clip s: the check pass finds sample 0's rows at 0, B, 2B (interleaved).
    torch.manual_seed(0)
    model = _FoldedEncoder("frames_major")
    report = apply_drop_path(model, 0.5, schedule="uniform", example_inputs=torch.randn(2, 3, 5, DIM))
    assert [(s.rows_per_sample, s.interleaved) for s in report.sites] == [(3, True)] * 4
    assert "0 (3 rows a sample, B apart)" in str(report)
    assert all(m.interleaved for m in model.modules() if isinstance(m, DropPath))
    model.train()
    seen = []
    model.blocks[0].mlp.register_forward_hook(lambda m, a, out: seen.append(out))
    model(torch.randn(64, 3, 5, DIM))
    dropped = (seen[0] == 0).flatten(1).all(1).view(3, 64)  # (frame, clip)
    assert (dropped.all(0) | (~dropped).all(0)).all(), "frames of one clip got different decisions"
    assert 10 < int(dropped.all(0).sum()) < 54  # 64 clips at 0.5: mean 32, sd 4
    model.eval()
    clip = torch.randn(4, 3, 5, DIM)
    with torch.no_grad():
        patched = model(clip)
    remove_drop_path(model)
    with torch.no_grad():
        assert torch.equal(patched, model(clip))


class _FoldedThenPerSample(nn.Module):
    """Frame-major folded layers (``T x B`` rows), then layers on each clip as one sample (``(B, T x tokens, DIM)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.folded = _FoldedEncoder("frames_major")
        self.blocks = nn.ModuleList(_FrameBlock() for _ in range(2))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        b, t, n, d = clip.shape
        x = self.folded(clip).view(t, b, n, d).transpose(0, 1).reshape(b, t * n, d)
        for block in self.blocks:
            x = block(x)
        return x


def test_frames_folded_frame_major_mask_in_skip_mode_and_pass_its_exactness_check():
    # Skip mode masks rows folded into the batch and skips the per-sample layers after them; the exactness check
    # passes (no branch disarmed) and training drops whole clips. Its probing pass drops sample 1 everywhere:
    # in the folded layers rows 1, B + 1, 2B + 1, and never a row of another sample.
    torch.manual_seed(0)
    model = _FoldedThenPerSample()
    report = apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True, example_inputs=torch.randn(2, 3, 5, DIM))
    computed = [(s.path.split(".")[0], s.compute, s.rows_per_sample, s.interleaved) for s in report.sites]
    assert computed == [("folded", "mask", 3, True)] * 4 + [("blocks", "skip", 1, False)] * 4, (computed, report.notes)
    assert not [n for n in report.notes if "not exact" in n], report.notes
    model.train()
    seen = []
    model.folded.blocks[1].mlp.register_forward_hook(lambda m, a, out: seen.append(out))
    model(torch.randn(64, 3, 5, DIM)).sum().backward()
    dropped = (seen[0] == 0).flatten(1).all(1).view(3, 64)
    assert (dropped.all(0) | (~dropped).all(0)).all() and 10 < int(dropped.all(0).sum()) < 54
    drop = model.folded.blocks[0].mlp[2].surgery_drop_path
    x = torch.randn(3 * 2, 5, DIM)
    with torch.no_grad(), drop.probing((torch.tensor([0]), torch.ones(1)), lambda *a: None):
        out = drop.eval()(x)
    assert torch.equal(out[0::2], x[0::2]) and not out[1::2].any()


def test_frames_folded_in_no_order_of_samples_are_not_grouped_and_the_error_says_why():
    torch.manual_seed(0)
    model, clip = _FoldedEncoder("shuffled"), torch.randn(2, 3, 5, DIM)
    snapshot = ModelSnapshot(model)
    with pytest.raises(NoResidualBranchError, match="consecutive or B apart"):
        apply_drop_path(model, 0.5, example_inputs=clip)
    snapshot.assert_same()


def test_a_dimension_of_the_batch_size_by_chance_is_not_taken_for_the_batch():
    # Two frames and a batch of two: dim 1 (frames) has the batch size, dim 0 (B x 5 positions) grows with it.
    torch.manual_seed(0)
    model = _FoldedEncoder("positions")
    report = apply_drop_path(model, 0.5, schedule="uniform", example_inputs=torch.randn(2, 2, 5, DIM))
    assert [(s.batch_dim, s.rows_per_sample) for s in report.sites] == [(0, 5)] * 4


class _MaskedSegmentBlock(nn.Module):
    """Attention within segments by a mask built on the device (no host values: compiles with fullgraph)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        segment = torch.searchsorted(cu_seqlens[1:], torch.arange(x.shape[0]), right=True)
        scores = (x @ x.T).masked_fill(segment[:, None] != segment[None, :], float("-inf"))
        x = x + self.proj(torch.softmax(scores, dim=-1) @ x)
        return x + self.mlp(x)


class _MaskedTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_MaskedSegmentBlock() for _ in range(2))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        cu = F.pad(lengths.cumsum(0), (1, 0))
        for block in self.blocks:
            x = block(x, cu)
        return x


def test_packed_drop_compiles_with_fullgraph_and_matches_eager():
    torch.manual_seed(0)
    model = _MaskedTower()
    report = apply_drop_path(model, 0.5, schedule="uniform", example_inputs={"lengths": LENGTHS, "x": torch.randn(22, DIM)})
    assert len(report.sites) == 4 and all(s.packed for s in report.sites)
    model.train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # the block pre-hooks and the mask trace
    x, lengths = torch.randn(12, DIM), torch.tensor([3, 4, 5])
    with torch.random.fork_rng():
        torch.manual_seed(1)
        eager = model(x, lengths)
        torch.manual_seed(1)
        assert torch.equal(compiled(x, lengths), eager)
