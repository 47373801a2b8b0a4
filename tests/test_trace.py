"""Finding residual branches with no per-model code: layouts, blocks, batch dims, what is not a site."""

import pytest
import torch
from helpers import ModelSnapshot, TinyTransformer, idle_sites
from torch import nn

from droppath_surgery import (
    BatchDimError,
    NoResidualBranchError,
    apply_drop_path,
    find_residual_branches,
    set_drop_path_rate,
)


def test_tiny_transformer_two_branches_per_block_and_head_excluded():
    model = TinyTransformer(depth=4)
    x = torch.randn(2, 5, 8)
    snap = ModelSnapshot(model)
    report = find_residual_branches(model, x)
    snap.assert_same()  # finding changes nothing: modules, state, flags, hooks, RNG
    assert [(s.block, s.branch) for s in report.sites] == [(b, i) for b in range(4) for i in range(2)]
    assert [s.path for s in report.sites[:2]] == ["blocks.0.attn", "blocks.0.mlp.2"]
    assert report.sites[0].output_index == (0,)  # attention returns (out, weights)
    assert all(s.batch_dim == 0 and s.kind == "hook" for s in report.sites)
    assert all(not s.path.startswith("head") for s in report.sites)
    assert report.num_blocks == 4


def test_loop_over_module_list_in_the_parent_forward():
    class FF(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

        def forward(self, x):
            return self.net(x)

    class Net(nn.Module):  # the lucidrains layout: blocks are pairs of branches in nested ModuleLists
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.ModuleList([FF(), FF()]) for _ in range(3)])

        def forward(self, x):
            for attn, ff in self.layers:
                x = attn(x) + x
                x = ff(x) + x
            return x

    report = find_residual_branches(Net(), torch.randn(4, 5, 8), rate=0.1)
    assert [s.block_path for s in report.sites] == ["layers.0", "layers.0", "layers.1", "layers.1", "layers.2", "layers.2"]
    assert [s.rate for s in report.sites] == pytest.approx([0, 0, 0.05, 0.05, 0.1, 0.1])


class SeqFirstBlock(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2)  # sequence-first (L, N, D)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.attn(h, h, h)[0]
        return x + self.fc(self.norm(x))


class SeqFirstNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[SeqFirstBlock() for _ in range(3)])

    def forward(self, x):
        return self.blocks(x)


@pytest.mark.parametrize("shape", [(6, 3, 8), (3, 3, 8), (2, 2, 8)])
def test_sequence_first_stream_is_found_to_have_batch_dim_1(shape):
    # (L, N, D) inputs: the independence check rules out dim 0 (attention mixes tokens), also
    # when L == N, where the sizes alone cannot tell.
    report = find_residual_branches(SeqFirstNet(), torch.randn(*shape))
    assert [s.batch_dim for s in report.sites] == [1] * 6


def test_a_single_dimension_that_fits_the_traced_shapes_needs_no_independence_pass():
    # (N, C, H, W) images: only dim 0 fits the branches' shapes (the doubled-channels pass fails at the
    # first convolution), so no pass beyond the recorded one completes. A sequence-first (L, N, D)
    # input fits both dims, and the small passes of the independence check decide (see above).
    def completed_passes(model, x):
        seen = []
        model.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
        report = find_residual_branches(model, x)
        return report, seen

    conv = nn.Sequential(nn.Conv2d(3, 8, 3), *[_ConvRes() for _ in range(2)])
    report, seen = completed_passes(conv, torch.randn(4, 3, 9, 9))
    assert {s.batch_dim for s in report.sites} == {0} and seen == [(4, 3, 9, 9)]
    report, seen = completed_passes(SeqFirstNet(), torch.randn(6, 3, 8))
    assert {s.batch_dim for s in report.sites} == {1}
    assert seen[0] == (6, 3, 8) and (2, 3, 8) in seen[1:] and (6, 2, 8) in seen[1:]


def test_sequence_first_training_drops_whole_samples_never_tokens():
    model = SeqFirstNet()
    apply_drop_path(model, 0.5, schedule="uniform", example_inputs=torch.randn(6, 4, 8))
    seen = []
    for drop in [m for m in model.modules() if type(m).__name__ == "DropPath"]:
        drop.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    model.train()
    model(torch.randn(7, 64, 8))
    assert len(seen) == 6
    for x, y in seen:
        per_sample_zero = (y == 0).all(dim=2).all(dim=0)  # (N,)
        per_element_zero = (y == 0).all(dim=2)  # (L, N)
        # every sample is either dropped at all positions or at none
        assert torch.equal(per_element_zero.any(0), per_sample_zero)
        assert 0 < per_sample_zero.sum() < 64


def test_explicit_batch_dim_is_used_everywhere():
    report = find_residual_branches(SeqFirstNet(), torch.randn(6, 3, 8), batch_dim=1)
    assert {s.batch_dim for s in report.sites} == {1}
    with pytest.raises(BatchDimError, match="out of range"):
        find_residual_branches(SeqFirstNet(), torch.randn(6, 3, 8), batch_dim=5)


@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_transformer_encoder(batch_first):
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=batch_first)
    encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    report = apply_drop_path(encoder, 0.1, example_inputs=x)
    assert [s.path for s in report.sites[:2]] == ["layers.0.dropout1", "layers.0.dropout2"]
    assert len(report.sites) == 6
    assert {s.batch_dim for s in report.sites} == {0 if batch_first else 1}
    # dropout1/2 have p = 0.1 > 0: kept (hooked), not replaced, so regular dropout still applies
    assert all(s.kind == "hook" for s in report.sites)
    assert isinstance(encoder.layers[0].dropout1, nn.Dropout)


def test_inplace_residual_and_inplace_activation():
    class Bottleneck(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 1)
            self.act = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            shortcut = x
            x = self.bn(self.conv2(self.act(self.conv1(x))))
            x += shortcut
            return self.act(x)

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(Bottleneck(), Bottleneck()))
    report = apply_drop_path(net, 0.2, example_inputs=torch.randn(2, 3, 9, 9))
    assert [s.path for s in report.sites] == ["1.0.bn", "1.1.bn"]
    assert [s.rate for s in report.sites] == pytest.approx([0.0, 0.2])


def test_shared_module_with_other_uses_is_not_given_drop_path():
    # Like HF Swin: one dropout applied inside the attention branch (to windows) and at the end of
    # the MLP branch. Drop path must go on the MLP branch's own module, never on the shared one.
    class SwinLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Linear(8, 8)
            self.mlp = nn.Linear(8, 8)
            self.dropout = nn.Dropout(0.0)
            self.drop_path = nn.Identity()

        def forward(self, x):
            windows = x.reshape(-1, 2, 8)  # (batch * windows, tokens, dim)
            a = self.dropout(self.attn(torch.relu(windows))).reshape(x.shape)
            x = x + self.drop_path(a)
            return self.dropout(self.mlp(torch.relu(x))) + x

    net = nn.ModuleList([SwinLike(), SwinLike()])
    model = nn.Sequential(*net)
    report = apply_drop_path(model, 0.1, example_inputs=torch.randn(2, 4, 8))
    assert [s.path for s in report.sites] == ["0.drop_path", "0.mlp", "1.drop_path", "1.mlp"]
    assert type(model[0].dropout) is nn.Dropout and not model[0].dropout._forward_hooks


def test_placeholder_shared_across_blocks_is_not_replaced():
    shared = nn.Identity()

    class B(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.drop_path = shared

        def forward(self, x):
            return x + self.drop_path(self.fc(torch.relu(x)))

    model = nn.Sequential(B(), B(), B())
    report = apply_drop_path(model, 0.2, example_inputs=torch.randn(2, 8))
    # one Identity serves three blocks with three different rates: hook each block's fc instead
    assert [s.path for s in report.sites] == ["0.fc", "1.fc", "2.fc"]
    assert model[0].drop_path is shared


def test_model_without_residual_branches_raises_and_is_untouched():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(2, 4)
    snap = ModelSnapshot(model)
    with pytest.raises(NoResidualBranchError, match="no residual branch"):
        apply_drop_path(model, 0.1, example_inputs=x)
    snap.assert_same()


def test_residual_only_outside_the_block_stack_is_not_a_site():
    class HeadOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.mlp = nn.Linear(4, 4)

        def forward(self, x):
            x = self.fc(x)
            return x + self.mlp(torch.relu(x))

    with pytest.raises(NoResidualBranchError, match="outside the repeated block stack"):
        find_residual_branches(HeadOnly(), torch.randn(2, 4))


def test_non_residual_additions_are_not_sites():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(5, 8))
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.c = nn.Linear(8, 8)

        def forward(self, x):
            x = x + self.pos  # parameter, not computed from x
            y = self.a(x) + self.b(x)  # two branches of one fork: neither is an ancestor of the other
            return y + torch.ones_like(y)  # constant

    with pytest.raises(NoResidualBranchError):
        find_residual_branches(nn.Sequential(Block(), Block()), torch.randn(2, 5, 8))


def test_batch_dim_ambiguity_resolved_by_doubling():
    # Batch-first inputs (N=4, L=4, D) that the model runs sequence-first inside: every branch is
    # (L=4, N=4, D), so the sizes alone cannot tell, and the first dimension of the batch's size (0)
    # would be wrong. Doubling the batch grows dimension 1 only.
    class SeqFirstInside(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(SeqFirstBlock(), SeqFirstBlock())

        def forward(self, x):
            return self.blocks(x.transpose(0, 1)).transpose(0, 1)

    report = find_residual_branches(SeqFirstInside(), torch.randn(4, 4, 8))
    assert [s.batch_dim for s in report.sites] == [1] * 4
    assert all(s.shape == (4, 4, 8) for s in report.sites)


def test_on_the_meta_device_an_undecidable_batch_dim_is_asked_for():
    # No values on the meta device: a sequence-first (L, N, D) input fits dimension 0 and 1 alike,
    # so it must not silently get 0.
    with torch.device("meta"):
        model, x = SeqFirstNet(), torch.randn(6, 3, 8)
    with pytest.raises(BatchDimError, match=r"meta device.*both dimensions \[0, 1\].*pass batch_dim="):
        find_residual_branches(model, x)
    report = find_residual_branches(model, x, batch_dim=1)
    assert {s.batch_dim for s in report.sites} == {1}
    # An input whose other dimension fits no branch is decided by shapes alone.
    with torch.device("meta"):
        conv = nn.Sequential(nn.Conv2d(3, 8, 3), *[_ConvRes() for _ in range(2)])
    assert {s.batch_dim for s in find_residual_branches(conv, torch.randn(2, 3, 9, 9, device="meta")).sites} == {0}


class _ConvRes(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))

    def forward(self, x):
        return x + self.f(x)


class Gelu(nn.Module):
    def forward(self, x):
        return nn.functional.gelu(x)


def test_parallel_block_has_two_branches():
    class Parallel(nn.Module):  # x + attn(norm(x)) + mlp(norm(x)), as GPT-J / ViT-22B blocks
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.attn = nn.Sequential(nn.Linear(8, 8), Gelu())
            self.mlp = nn.Sequential(nn.Linear(8, 16), Gelu(), nn.Linear(16, 8))

        def forward(self, x):
            h = self.norm(x)
            return x + self.attn(h) + self.mlp(h)

    report = find_residual_branches(nn.Sequential(Parallel(), Parallel()), torch.randn(2, 5, 8))
    assert [(s.block_path, s.path) for s in report.sites] == [("0", "0.attn.1"), ("0", "0.mlp.2"), ("1", "1.attn.1"), ("1", "1.mlp.2")]


def test_projection_shortcut_block():
    class Down(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.act = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.shortcut = nn.Conv2d(cin, cout, 1)

        def forward(self, x):
            return self.shortcut(x) + self.conv2(self.act(self.conv1(x)))

    model = nn.Sequential(Down(3, 4), Down(4, 4))
    report = find_residual_branches(model, torch.randn(2, 3, 6, 6))
    assert [s.path for s in report.sites] == ["0.conv2", "1.conv2"]


def test_positional_convolution_is_not_a_branch():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.cpe = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # x + dwconv(x): positional encoding
            self.act = nn.Identity()
            self.mlp = nn.Sequential(nn.Conv2d(4, 8, 1), nn.GELU(), nn.Conv2d(8, 4, 1))

        def forward(self, x):
            x = x + self.act(self.cpe(x))
            return x + self.mlp(x)

    report = find_residual_branches(nn.Sequential(Block(), Block()), torch.randn(2, 4, 5, 5))
    assert [s.path for s in report.sites] == ["0.mlp.2", "1.mlp.2"]
    assert [(s.path, "positional" in s.reason) for s in report.skipped] == [("0.act", True), ("1.act", True)]


class _PoolMixer(nn.Module):  # PoolFormer's token mixer: pool(x) - x, linear and per channel
    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class _Scale(nn.Module):  # timm's metaformer Scale: a per-channel parameter, viewed for NCHW
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class _PoolBlock(nn.Module):
    """timm's PoolFormer v1 block: ``x + layer_scale1(drop_path1(mixer(norm1(x))))`` (the slot is
    before the scaling); ``slot=False`` leaves the drop path slot out, ``groups`` sets the norm."""

    def __init__(self, dim=4, groups=1, slot=True):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, dim)
        self.token_mixer = _PoolMixer()
        if slot:
            self.drop_path1 = nn.Identity()
        self.layer_scale1 = _Scale(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 8, 1), nn.GELU(), nn.Conv2d(8, dim, 1))

    def forward(self, x):
        y = self.token_mixer(self.norm1(x))
        y = self.drop_path1(y) if hasattr(self, "drop_path1") else y
        x = x + self.layer_scale1(y)
        return x + self.mlp(x)


def test_a_norm_whose_statistics_span_the_channels_mixes_them_and_a_slot_before_a_scaling_is_the_site():
    x = torch.randn(2, 4, 5, 5)
    # The token mixer computes through its group norm (one group: statistics over all channels); the
    # block's own slot before the scaling is replaced, as timm drops there.
    report = find_residual_branches(nn.Sequential(_PoolBlock(), _PoolBlock()), x)
    assert [(s.path, s.kind) for s in report.sites] == [
        ("0.drop_path1", "replace"), ("0.mlp.2", "hook"), ("1.drop_path1", "replace"), ("1.mlp.2", "hook")
    ]
    # Without a slot the mixer is still a branch (the norm mixes channels): its end is the scaling.
    report = find_residual_branches(nn.Sequential(_PoolBlock(slot=False), _PoolBlock(slot=False)), x)
    assert [s.path for s in report.sites] == ["0.layer_scale1", "0.mlp.2", "1.layer_scale1", "1.mlp.2"]
    # A group norm with one channel per group is an instance norm: per channel, so no block branch.
    report = find_residual_branches(nn.Sequential(_PoolBlock(groups=4, slot=False), _PoolBlock(groups=4, slot=False)), x)
    assert [s.path for s in report.sites] == ["0.mlp.2", "1.mlp.2"]
    assert [(s.path, "linear or per-channel" in s.reason) for s in report.skipped] == [
        ("0.layer_scale1", True), ("1.layer_scale1", True)
    ]


class _TokenAttnBlock(nn.Module):  # x + attn(x) over the tokens of one sequence (dim -2), then x + mlp(x)
    def __init__(self, dim=6):
        super().__init__()
        self.qkv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 12), nn.GELU(), nn.Linear(12, dim))

    def forward(self, x):
        h = self.qkv(x)
        x = x + self.proj(torch.softmax(h @ h.transpose(-1, -2), -1) @ h)
        return x + self.mlp(x)


class _PackedTower(nn.Module):
    """A Qwen2-VL-style vision tower: the patches of every image as one sequence ``(P, D)``, then
    groups of 4 patches merged into ``(P / 4, D)`` and refined by one more block."""

    def __init__(self, dim=6):
        super().__init__()
        self.blocks = nn.ModuleList([_TokenAttnBlock(dim), _TokenAttnBlock(dim)])
        self.merge = nn.Linear(4 * dim, dim)
        self.post = nn.ModuleList([_TokenAttnBlock(dim)])

    def forward(self, patches):
        for b in self.blocks:
            patches = b(patches)
        merged = self.merge(patches.reshape(-1, 4 * patches.shape[-1]))
        for b in self.post:
            merged = b(merged)
        return merged


class _PackedVLM(nn.Module):  # text (B, L, D) with the packed tower's features added to every sample alike
    def __init__(self, dim=6):
        super().__init__()
        self.visual = _PackedTower(dim)
        self.layers = nn.ModuleList([_TokenAttnBlock(dim), _TokenAttnBlock(dim)])

    def forward(self, text, patches):
        x = text + self.visual(patches).mean(0)
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_packed_stream_beside_a_batched_one_is_left_out_with_a_warning():
    # The merged stream (2 rows) has the batch size by chance; the doubled pass shows it does not grow.
    model = _PackedVLM()
    inputs = {"text": torch.randn(2, 5, 6), "patches": torch.randn(8, 6)}
    with pytest.warns(UserWarning, match=r"6 residual branches of blocks left without drop path \(visual\.blocks\.0\.proj, "):
        report = apply_drop_path(model, 0.1, example_inputs=inputs)
    assert report.verified is True
    assert [s.path for s in report.sites] == ["layers.0.proj", "layers.0.mlp.2", "layers.1.proj", "layers.1.mlp.2"]
    assert [s.path for s in report.skipped if "packs or folds the samples" in s.reason] == [
        "visual.blocks.0.proj", "visual.blocks.0.mlp", "visual.blocks.1.proj", "visual.blocks.1.mlp",
        "visual.post.0.proj", "visual.post.0.mlp",
    ]


def test_packed_patches_passed_first_are_never_read_as_samples():
    # Dim 0 (8 patches) fits every branch once the doubled pass resolves the merged stream (2 -> 4 rows),
    # but its patches are no independent samples: the independence pass rejects it, and the error says so.
    model, patches = _PackedTower(), torch.randn(8, 6)
    before = ModelSnapshot(model)
    with pytest.raises(BatchDimError, match="cannot tell which dimension"):
        apply_drop_path(model, 0.1, example_inputs=patches)
    before.assert_same()


class _LengthRegulated(nn.Module):
    """FastSpeech 2 style: an encoder layer on the tokens, then each token repeated by a duration computed
    from its value and the batch padded to its longest sample, so the decoder stream's length depends on
    every sample."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        mlp = lambda: nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6))  # noqa: E731
        self.encoder = nn.ModuleList(mlp() for _ in range(2))
        self.decoder = nn.ModuleList(mlp() for _ in range(2))

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.encoder:
            x = x + layer(x + x.mean(1, keepdim=True))  # the tokens of a sample mix, as in attention
        frames = [row.repeat_interleave(d, dim=0) for row, d in zip(x, ids % 3 + 1)]
        x = nn.utils.rnn.pad_sequence(frames, batch_first=True)
        for layer in self.decoder:
            x = x + layer(x)
        return x


def test_a_stream_whose_length_depends_on_the_values_asks_for_batch_dim_and_says_why():
    # The encoder's (3, 4, 6) stream fits input dimension 0 and 1 by shape; the check pass on the first
    # two samples pads the decoder stream to 6 frames instead of sample 2's 12: sample 1's values differ, and
    # no dimension is confirmed per sample. batch_dim=0 says it.
    model, ids = _LengthRegulated(), torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [2, 2, 2, 2]])
    before = ModelSnapshot(model)
    with pytest.raises(BatchDimError, match=r"Input dimensions \[0(, 1)?\] fit the traced shapes, but a check pass "
                       r".* changed sample 1 .* length depends on the values.* Pass batch_dim="):
        apply_drop_path(model, 0.1, example_inputs=ids)
    before.assert_same()
    report = apply_drop_path(model, 0.1, example_inputs=ids, batch_dim=0)
    assert [s.path for s in report.sites] == ["encoder.0.2", "encoder.1.2", "decoder.0.2", "decoder.1.2"]
    assert report.verified is True


def test_blocks_without_containers_are_found_by_their_twins():
    class B(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

        def forward(self, x):
            return x + self.f(x)

    class Stage(nn.Module):
        def __init__(self, n):
            super().__init__()
            for i in range(n):
                self.add_module(f"b{i + 1}", B())

        def forward(self, x):
            for b in self.children():
                x = b(x)
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.s1, self.s2 = Stage(1), Stage(3)  # a stage of depth one has no twin of its own

        def forward(self, x):
            return self.s2(self.s1(x))

    report = find_residual_branches(Net(), torch.randn(2, 8), rate=0.3)
    assert [s.block_path for s in report.sites] == ["s1.b1", "s2.b1", "s2.b2", "s2.b3"]
    assert [s.rate for s in report.sites] == pytest.approx([0, 0.1, 0.2, 0.3])


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

    def forward(self, x):
        return x + self.f(x)


class _ResB(_Res):
    pass


class _Down(nn.Module):  # a plain downsampler in a stage: no residual, no drop path slot
    def __init__(self):
        super().__init__()
        self.fc, self.norm = nn.Linear(8, 8), nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.fc(x))


def test_repeated_pair_of_different_blocks_shares_one_rate_but_keeps_its_paths():
    # DaViT: blocks = Sequential(Sequential(SpatialBlock, ChannelBlock), ...): each pair is one
    # block of the schedule (one rate), while each sub-block is named by its own path.
    model = nn.Sequential(*[nn.Sequential(_Res(), _ResB()) for _ in range(3)])
    report = find_residual_branches(model, torch.randn(2, 8), rate=0.2)
    assert [s.block_path for s in report.sites] == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    assert [s.block for s in report.sites] == [0, 0, 1, 1, 2, 2]
    assert [s.rate for s in report.sites] == pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.2])
    assert report.num_blocks == 3


def test_stage_of_a_downsampler_and_blocks_is_no_composite_and_the_downsampler_is_not_counted():
    # StarNet / LowFormer: stages = Sequential(Sequential(down, Block), Sequential(down, Block, Block)).
    model = nn.Sequential(nn.Sequential(_Down(), _Res()), nn.Sequential(_Down(), _Res(), _Res()))
    report = find_residual_branches(model, torch.randn(2, 8), rate=0.2)
    assert [s.block_path for s in report.sites] == ["0.1", "1.1", "1.2"]
    assert [s.rate for s in report.sites] == pytest.approx([0, 0.1, 0.2])
    assert report.num_blocks == 3


def test_stage_mixing_block_classes_is_no_composite():
    # MobileNetV5: a stage Sequential(UIR, MobileAttention, UIR, ...) next to stages of one class.
    model = nn.Sequential(nn.Sequential(_Res(), _Res()), nn.Sequential(_Res(), _ResB(), _Res()))
    report = find_residual_branches(model, torch.randn(2, 8), rate=0.4)
    assert [s.block_path for s in report.sites] == ["0.0", "0.1", "1.0", "1.1", "1.2"]
    assert [s.rate for s in report.sites] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])


def test_the_one_stack_of_different_block_classes_is_no_composite():
    # OLMo Hybrid, SAM 3 LiteText's text model: layers = ModuleList(A, B, B, A) is the model's one stack, not
    # a repeated pair; taken for one composite it was one unit, and "linear" gave every branch rate 0.
    class Hybrid(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([_Res(), _ResB(), _ResB(), _Res()])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    report = find_residual_branches(Hybrid(), torch.randn(2, 8), rate=0.3)
    assert [s.block for s in report.sites] == [0, 1, 2, 3]
    assert [s.rate for s in report.sites] == pytest.approx([0, 0.1, 0.2, 0.3])
    assert report.num_blocks == 4


class _TokenMixer(nn.Module):  # (B, C, H, W) -> (B, H*W, C)
    def __init__(self, c=8):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))

    def forward(self, x):
        return self.f(x.flatten(2).transpose(1, 2))


class _LayoutBlock(nn.Module):
    """NextViT's ``x + out.transpose(-1, -2).reshape(B, C, H, W)``; ``seq_first`` returns the branch
    as (H*W, B, C) and transposes it back, so the batch is dimension 1 of the module output."""

    def __init__(self, seq_first=False):
        super().__init__()
        self.mixer, self.seq_first = _TokenMixer(), seq_first

    def forward(self, x):
        b, c, h, w = x.shape
        out = self.mixer(x)
        if self.seq_first:
            out = self.mixer(x).transpose(0, 1).contiguous()  # (N, B, C): a module output below
            return x + out.permute(1, 2, 0).reshape(b, c, h, w)
        return x + out.transpose(-1, -2).reshape(b, c, h, w)


class _SeqFirstOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.mixer = _TokenMixer()

    def forward(self, x):
        return self.mixer(x).transpose(0, 1)  # (H*W, B, C)


class _SeqFirstBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _SeqFirstOut()

    def forward(self, x):
        b, c, h, w = x.shape
        return x + self.attn(x).permute(1, 2, 0).reshape(b, c, h, w)


def test_branch_through_layout_operations_is_found_at_the_module_output():
    model = nn.Sequential(_LayoutBlock(), _LayoutBlock())
    x = torch.randn(2, 8, 3, 3)
    before = model.eval()(x)
    report = apply_drop_path(model, 0.1, example_inputs=x)
    assert [(s.path, s.batch_dim, s.shape) for s in report.sites] == [("0.mixer", 0, (2, 9, 8)), ("1.mixer", 0, (2, 9, 8))]
    assert torch.equal(before, model.eval()(x))


def test_batch_dim_is_mapped_through_the_layout_to_the_module_output():
    model = nn.Sequential(_SeqFirstBlock(), _SeqFirstBlock())
    report = apply_drop_path(model, 0.5, schedule="uniform", example_inputs=torch.randn(3, 8, 2, 2))
    assert [(s.path, s.batch_dim) for s in report.sites] == [("0.attn", 1), ("1.attn", 1)]
    model.train()
    x = torch.randn(64, 8, 2, 2)
    branch = model[0].attn.mixer(x).transpose(0, 1)  # (4, 64, 8)
    torch.manual_seed(0)
    y = model[0].attn(x)
    dropped = (y == 0).all(dim=2).all(dim=0)  # whole samples, never tokens
    assert torch.equal((y == 0).all(dim=2).any(dim=0), dropped)
    assert 0 < dropped.sum() < 64
    assert torch.allclose(y[:, ~dropped], branch[:, ~dropped] * 2, atol=1e-6)


def test_explicit_batch_dim_of_the_stream_is_mapped_to_the_module_output():
    report = find_residual_branches(nn.Sequential(_SeqFirstBlock(), _SeqFirstBlock()), torch.randn(3, 8, 2, 2), batch_dim=0)
    assert [(s.path, s.batch_dim, s.shape) for s in report.sites] == [("0.attn", 1, (4, 3, 8)), ("1.attn", 1, (4, 3, 8))]


def test_slice_of_a_module_output_added_to_the_shortcut_is_a_branch():
    class RexBlock(nn.Module):  # RexNet: x = cat([f(x)[:, :c] + shortcut, f(x)[:, c:]])
        def __init__(self, c=4, extra=2):
            super().__init__()
            self.c = c
            self.conv = nn.Sequential(nn.Conv2d(c, c + extra, 1), nn.ReLU(), nn.Conv2d(c + extra, c + extra, 1))
            self.out = nn.Conv2d(c + extra, c, 1)

        def forward(self, x):
            y = self.conv(x)
            y = torch.cat([y[:, : self.c] + x, y[:, self.c :]], dim=1)
            return self.out(y)

    report = find_residual_branches(nn.Sequential(RexBlock(), RexBlock()), torch.randn(2, 4, 3, 3))
    assert [(s.path, s.batch_dim) for s in report.sites] == [("0.conv.2", 0), ("1.conv.2", 0)]


class _WindowBlock(nn.Module):
    """SAM ViT: attention on windows of (B * windows, ws, ws, C), un-partitioned before the add."""

    def __init__(self, ws=2, c=8):
        super().__init__()
        self.ws = ws
        self.attn = nn.Sequential(nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))

    def forward(self, x):  # (B, H, W, C)
        b, h, w, c = x.shape
        ws = self.ws
        win = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)
        out = self.attn(win)
        out = out.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return x + out


def test_branch_on_windows_drops_all_windows_of_a_sample_together_never_one_window():
    model = nn.Sequential(_WindowBlock(), _WindowBlock())
    # 4 windows per sample: the replayed layout maps windows 0-3 to sample 0, 4-7 to sample 1, ...
    report = apply_drop_path(model, 0.5, schedule="uniform", example_inputs=torch.randn(2, 4, 4, 8))
    assert [(s.path, s.batch_dim, s.rows_per_sample) for s in report.sites] == [("0.attn.2", 0, 4), ("1.attn.2", 0, 4)]
    assert "0 (4 rows a sample)" in str(report)
    model.train()
    x = torch.randn(64, 4, 4, 8)
    out = model[0](x)  # x + branch: a dropped sample is exactly its input, at every window
    dropped = (out == x).flatten(1).all(1)
    kept_anywhere = (out != x).flatten(1).any(1)
    assert torch.equal(dropped, ~kept_anywhere) and 10 < dropped.sum() < 54
    with pytest.raises(BatchDimError, match="not a multiple of the 4 rows per sample"):
        model[0].attn[2].surgery_drop_path(torch.randn(6, 2, 2, 8))
    # One window per sample: the window is the sample.
    report = find_residual_branches(model, torch.randn(2, 2, 2, 8))
    assert [(s.path, s.batch_dim, s.rows_per_sample) for s in report.sites] == [("0.attn.2", 0, 1), ("1.attn.2", 0, 1)]


def test_composite_held_by_a_layer_module_shares_one_rate():
    # torchvision MaxViT: blocks.*.layers.* = MaxVitLayer(layers=Sequential(MBconv, window, grid)).
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(_Res(), _ResB(), _ResB())

        def forward(self, x):
            return self.layers(x)

    model = nn.Sequential(Layer(), Layer())
    report = find_residual_branches(model, torch.randn(2, 8), rate=0.1)
    assert [(s.block, s.branch, s.block_path) for s in report.sites] == [
        (b, i, f"{b}.layers.{i}") for b in range(2) for i in range(3)
    ]
    assert [s.rate for s in report.sites] == pytest.approx([0] * 3 + [0.1] * 3)


def test_blocks_nested_in_a_member_of_the_block_stack_share_its_rate():
    # MobileViT: stages.2.1 (a MobileVitBlock, no residual of its own) holds transformer layers;
    # timm gives them the rate of stages.2.1, a block of the stack stages.*.* like stages.1.1.
    class Holder(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.inner = nn.Sequential(*[_Res() for _ in range(n)])

        def forward(self, x):
            return self.inner(x)

    model = nn.Sequential(nn.Sequential(_Res(), _Res()), nn.Sequential(_Res(), Holder(3)))
    report = find_residual_branches(model, torch.randn(2, 8), rate=0.3)
    assert [s.block_path for s in report.sites] == ["0.0", "0.1", "1.0", "1.1.inner.0", "1.1.inner.1", "1.1.inner.2"]
    assert [s.rate for s in report.sites] == pytest.approx([0, 0.1, 0.2, 0.3, 0.3, 0.3])
    assert report.num_blocks == 4


def _mlp():
    return nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))


def test_operand_reaching_the_fork_input_only_through_another_input_is_no_branch():
    # CoaT's parallel block: cur4 = f(x4) + g(x3), with x4 computed from x3 before the call. f(x4)
    # is no branch of x3 (it reaches x3 only through the other input x4).
    class Parallel(nn.Module):
        def __init__(self):
            super().__init__()
            self.f, self.g = _mlp(), _mlp()

        def forward(self, x3, x4):
            return self.f(x4) + self.g(x3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.h = _mlp()
            self.blocks = nn.ModuleList([Parallel(), Parallel()])
            self.res = nn.ModuleList([_Res(), _Res()])

        def forward(self, x):
            for res, block in zip(self.res, self.blocks):
                x = res(x)
                x = block(x, self.h(x))
            return x

    report = find_residual_branches(Net(), torch.randn(2, 8))
    assert [s.block_path for s in report.sites] == ["res.0", "res.1"]


def test_sum_of_pieces_of_one_projection_is_one_branch():
    # ViT-22B's ParallelScalingBlock (timm vit_*_xp, vit_pwee): one in_proj split into attention and MLP
    # inputs, summed as attn_out(a) + mlp_out(m) and added once, x + ls(sum). The inner sum's operands
    # come from x by paths of different length, but they are pieces of one computed value, so the
    # shorter one is no shortcut: one branch per block. A shortcut that is the fork input's own slice
    # (a reversible block's x1 + f(x2)) stays a merge.
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = nn.Linear(8, 24)
            self.attn_out, self.mlp_out = nn.Linear(8, 8), nn.Linear(16, 8)
            self.ls = nn.Identity()

        def forward(self, x):
            a, m = torch.split(self.in_proj(x), [8, 16], dim=-1)
            v = a.transpose(1, 2).reshape(a.shape).contiguous()  # the attention path is the longer one
            a = (torch.softmax(a @ a.transpose(-1, -2), -1) @ v).flatten(2)
            return x + self.ls(self.attn_out(a) + self.mlp_out(torch.relu(m)))

    report = find_residual_branches(nn.Sequential(Fused(), Fused()), torch.randn(2, 5, 8))
    assert [(s.block_path, s.path) for s in report.sites] == [("0", "0.ls"), ("1", "1.ls")]

    class Rev(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = _mlp()

        def forward(self, x):
            x1, x2 = x.chunk(2, dim=-1)
            return torch.cat([x1 + self.f(x2), x2], -1)

    report = find_residual_branches(nn.Sequential(Rev(), Rev()), torch.randn(2, 16))
    assert [s.block_path for s in report.sites] == ["0", "1"]

    # The same rows taken twice are no pieces (HiggsAudio's x[~m] += mlp(x[~m]), each x[~m] a gather of its
    # own): that branch is still found.
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.mlp = _mlp(), _mlp()
            self.register_buffer("m", torch.tensor([True, False, True]))

        def forward(self, x):
            x = x + self.attn(x)
            x[:, self.m] += self.mlp(x[:, self.m].reshape(-1, 8)).view(x.shape[0], -1, 8)
            return x

    report = find_residual_branches(nn.Sequential(Masked(), Masked()), torch.randn(2, 3, 8))
    assert [s.path for s in report.sites] == ["0.attn.2", "0.mlp.2", "1.attn.2", "1.mlp.2"]


def test_skip_inside_a_part_of_the_block_on_a_value_it_computed_is_no_branch():
    # SwiftFormer's attention returns proj(attn * key) + query, query computed inside it.
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.proj = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            q = self.q(x)
            return self.proj(torch.tanh(q) * x) + q

    class Blk(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.mlp = Attn(), _mlp()

        def forward(self, x):
            x = x + self.attn(x)
            return x + self.mlp(x)

    report = find_residual_branches(nn.Sequential(Blk(), Blk()), torch.randn(2, 8))
    assert [s.path for s in report.sites] == ["0.attn", "0.mlp.2", "1.attn", "1.mlp.2"]
    assert [s.path for s in report.skipped] == ["0.attn.proj", "1.attn.proj"]
    assert "internal skip" in report.skipped[0].reason


def test_skip_inside_a_part_on_a_value_it_computed_counts_when_it_ends_in_a_drop_path_slot():
    # Grounding DINO's fusion layer: v = LN(v); v = v + drop_path(gamma * attn(v)), inside its encoder layer.
    # The architecture names that skip a drop path slot (HF drops it): it is a branch. Without the slot
    # (the same part, the slot not named) it stays an internal skip.
    class Fusion(nn.Module):
        def __init__(self, slot):
            super().__init__()
            self.norm, self.attn = nn.LayerNorm(8), _mlp()
            self.gamma = nn.Parameter(torch.full((8,), 0.5))
            self.drop_path = nn.Identity() if slot else None

        def forward(self, v):
            v = self.norm(v)
            out = self.gamma * self.attn(v)
            return v + (self.drop_path(out) if self.drop_path is not None else out)

    class Layer(nn.Module):
        def __init__(self, slot):
            super().__init__()
            self.fusion, self.mlp = Fusion(slot), _mlp()

        def forward(self, x):
            x = self.fusion(x)
            return x + self.mlp(x)

    report = find_residual_branches(nn.Sequential(Layer(True), Layer(True)), torch.randn(2, 8))
    assert [s.path for s in report.sites] == ["0.fusion.drop_path", "0.mlp.2", "1.fusion.drop_path", "1.mlp.2"]
    report = find_residual_branches(nn.Sequential(Layer(False), Layer(False)), torch.randn(2, 8))
    assert [s.path for s in report.sites] == ["0.mlp.2", "1.mlp.2"]
    assert [s.path for s in report.skipped] == ["0.fusion.attn", "1.fusion.attn"]


def test_block_class_without_a_drop_path_slot_is_not_dropped_when_the_others_have_one():
    # GC ViT: MbConvBlock residuals in the stem and downsamplers hold no drop path slot; its
    # transformer blocks hold drop_path1/2 (nn.Identity in a build without drop path).
    class Slotted(_Res):
        def __init__(self):
            super().__init__()
            self.drop_path = nn.Identity()

        def forward(self, x):
            return x + self.drop_path(self.f(x))

    class Net(nn.Module):
        def __init__(self, cls):
            super().__init__()
            self.stem = nn.Sequential(_Res(), _Res())
            self.blocks = nn.Sequential(cls(), cls())

        def forward(self, x):
            return self.blocks(self.stem(x))

    report = find_residual_branches(Net(Slotted), torch.randn(2, 8), rate=0.1)
    assert [s.path for s in report.sites] == ["blocks.0.drop_path", "blocks.1.drop_path"]
    assert [s.rate for s in report.sites] == pytest.approx([0.0, 0.1])  # the stem is not counted
    assert [s.path for s in report.skipped] == ["stem.0.f", "stem.1.f"]
    assert "no drop path slot" in report.skipped[0].reason
    # No block names a slot: every residual block is dropped, as before.
    report = find_residual_branches(Net(_Res), torch.randn(2, 8))
    assert len(report.sites) == 4


def test_skip_inside_a_nested_block_of_a_block_class_is_kept():
    # RepViT: its downsampler runs a whole RepViTBlock (pre_block: x = mix(x); x + mlp(x)) first.
    class RB(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix, self.mlp = nn.Linear(8, 8), _mlp()

        def forward(self, x):
            x = self.mix(x)
            return x + self.mlp(x)

    class Down(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre_block, self.reduce = RB(), nn.Linear(8, 8)

        def forward(self, x):
            return self.reduce(self.pre_block(x))

    report = find_residual_branches(nn.Sequential(Down(), RB(), RB()), torch.randn(2, 8))
    assert [s.path for s in report.sites] == ["0.pre_block.mlp.2", "1.mlp.2", "2.mlp.2"]


class _CrossBlock(nn.Module):
    """A decoder block: x + mlp(x), then x + cross(x, memory)."""

    def __init__(self):
        super().__init__()
        self.mlp, self.q, self.out = _mlp(), _mlp(), nn.Linear(8, 8)

    def forward(self, x, memory):
        x = x + self.mlp(x)
        return x + self.out(torch.tanh(self.q(x) * memory.mean(1, keepdim=True)))


def test_stacks_are_chains_of_blocks_linked_by_one_residual_stream():
    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.ModuleList([_Res() for _ in range(2)])
            self.embed = nn.Linear(8, 8)
            self.decoder = nn.ModuleList([_CrossBlock() for _ in range(2)])

        def forward(self, src, tgt):
            for blk in self.encoder:
                src = blk(src)
            x = self.embed(tgt)  # the decoder's stream starts from its own input, not the encoder's
            for blk in self.decoder:
                x = blk(x, src)
            return x

    report = find_residual_branches(EncoderDecoder(), (torch.randn(2, 5, 8), torch.randn(2, 3, 8)))
    assert [(s.block_path, s.stack) for s in report.sites] == [
        ("encoder.0", 0), ("encoder.1", 0), ("decoder.0", 1), ("decoder.0", 1), ("decoder.1", 1), ("decoder.1", 1),
    ]

    class Stages(nn.Module):  # Swin-like: stages linked through a downsampler are one stack
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList([nn.Sequential(_Res(), _Res()), nn.Sequential(_Res(), _Res())])
            self.down = nn.Linear(8, 8)

        def forward(self, x):
            return self.stages[1](self.down(self.stages[0](x)))

    assert {s.stack for s in find_residual_branches(Stages(), torch.randn(2, 8)).sites} == {0}


def test_one_slot_rule_a_dropout_named_drop_is_no_drop_path_slot():
    from droppath_surgery.analysis.slots import is_drop_path_slot

    assert not is_drop_path_slot(nn.Dropout(0.0), "blocks.0.attn_drop")
    assert not is_drop_path_slot(nn.Identity(), "blocks.0.ls1")
    assert not is_drop_path_slot(nn.Dropout(0.1), "blocks.0.drop_path")  # not the identity in eval
    assert is_drop_path_slot(nn.Identity(), "blocks.0.drop_path1")
    assert is_drop_path_slot(nn.Dropout(0.0), "layers.3.stochastic_depth")

    class Block(nn.Module):  # the branch passes a drop path slot, then a dropout placeholder `proj_drop`
        def __init__(self, slot):
            super().__init__()
            self.f, self.proj_drop = _mlp(), nn.Dropout(0.0)
            self.drop_path = nn.Identity() if slot else None

        def forward(self, x):
            y = self.f(x)
            return x + self.proj_drop(self.drop_path(y) if self.drop_path is not None else y)

    # The slot wins over the outer `proj_drop` (which a rule of "any name with drop" would take);
    # without a slot, the outermost module returning the branch is used.
    for slot, want in ((True, ("0.drop_path", "replace")), (False, ("0.proj_drop", "replace"))):
        site = find_residual_branches(nn.Sequential(Block(slot), Block(slot)), torch.randn(2, 8)).sites[0]
        assert (site.path, site.kind) == want


class _WideBlock(nn.Module):
    def __init__(self, dim=256):
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())

    def forward(self, x):
        return x + self.f(x)


def test_recording_holds_no_activation_of_the_pass():
    """The analysis keeps provenance and per-sample sketches, not tensors: from the recording of a
    pass on user inputs (which runs the sample-independence check, comparing values), the tensors
    reachable besides the inputs and weights come to less than one activation (512 KiB here; keeping
    the additions' operands, as before, held 8 of them; the outputs are kept as fingerprints)."""
    import gc

    from droppath_surgery.analysis import analyse
    from droppath_surgery.isolation import observation

    model = nn.Sequential(*[_WideBlock() for _ in range(4)])
    x = torch.randn(8, 64, 256)
    with observation(model, x):
        analysis = analyse(model, (x,), {}, batch_dim=None, inputs_batch_first=False)
    assert len(analysis.branches) == 4 and analysis.input_dim == 0
    known = {id(x), *(id(t) for t in model.state_dict(keep_vars=True).values())}  # outputs are fingerprints
    seen, stack, held = set(), [analysis.recording], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (nn.Module, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            held += 0 if id(obj) in known else obj.numel() * obj.element_size()
            continue
        stack.extend(gc.get_referents(obj))
    assert held < x.numel() * x.element_size(), f"{held} bytes of tensors held by the recording"


def test_fingerprints_tell_bitwise_equal_tensors_from_changed_ones():
    from droppath_surgery.sketch import fingerprint

    torch.manual_seed(0)
    for t in (torch.randn(3, 1000, 700), torch.randn(64).bfloat16(), torch.randint(0, 9, (5, 7)), torch.rand(9) > 0.5):
        assert fingerprint(t) == fingerprint(t.clone()) and fingerprint(t.t() if t.ndim == 2 else t) is not None
        swapped = t.clone().view(-1)
        first, last = swapped[0].clone(), swapped[-1].clone()
        swapped[0], swapped[-1] = last, first
        if not torch.equal(first, last):
            assert fingerprint(swapped.view(t.shape)) != fingerprint(t)  # same bit sum, other positions
        flipped = t.clone().view(-1)
        flipped.view(torch.uint8)[-1] ^= 1  # one bit of the last element
        assert fingerprint(flipped.view(t.shape)) != fingerprint(t)
    assert fingerprint(torch.zeros(2, 3)) != fingerprint(torch.zeros(3, 2))
    meta = fingerprint(torch.empty(4, 5, device="meta"))
    assert meta.sums is None and meta.matches(torch.empty(4, 5, device="meta"))


class _GatedBlock(nn.Module):
    """Branches multiplied, after their last module, by live values not computed from them: TimesFM's MLP times
    (1 - padding), and an adaLN-style gate from a conditioning input. A per-sample mask on the module output
    commutes with both. A branch times a function of itself is no such product."""

    def __init__(self, self_gated: bool = False) -> None:
        super().__init__()
        self.attn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.gate = nn.Linear(4, 8)
        self.self_gated = self_gated

    def forward(self, x, cond, padding):
        a = self.attn(x)
        x = x + (a * torch.sigmoid(a) if self.self_gated else self.gate(cond)[:, None] * a)
        return x + self.mlp(x) * (1.0 - padding[..., None])


class _GatedStack(nn.Module):
    def __init__(self, self_gated: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_GatedBlock(self_gated), _GatedBlock(self_gated)])

    def forward(self, x, cond, padding):
        for block in self.blocks:
            x = block(x, cond, padding)
        return x


GATED_INPUTS = {"x": torch.randn(4, 5, 8), "cond": torch.randn(4, 4), "padding": (torch.arange(5) > 2).float().expand(4, 5)}


def test_a_branch_times_a_mask_or_a_gate_after_its_module_is_dropped_at_the_module():
    model = _GatedStack()
    report = apply_drop_path(model, 1.0, schedule="uniform", example_inputs=GATED_INPUTS)
    assert [s.path for s in report.sites] == ["blocks.0.attn.2", "blocks.0.mlp.2", "blocks.1.attn.2", "blocks.1.mlp.2"]
    assert report.verified is True
    model.train()  # rate 1: both branches of every sample dropped, before their gate and mask: the block is identity
    x = GATED_INPUTS["x"]
    assert torch.equal(model.blocks[0](x, GATED_INPUTS["cond"], GATED_INPUTS["padding"]), x)


def test_a_branch_times_a_function_of_itself_is_not_taken_for_a_gated_branch():
    report = apply_drop_path(_GatedStack(self_gated=True), 0.5, example_inputs=GATED_INPUTS)
    assert [s.path for s in report.sites] == ["blocks.0.mlp.2", "blocks.1.mlp.2"]  # a * sigmoid(a): not at attn


class _ScaledStreamBlock(nn.Module):
    """Ergo's and Muse Spark's residual gate: ``c * x + g * f(x)`` with per-channel ``c`` and ``g`` computed
    from a parameter (or ``c`` a live value computed from the stream: no merge then). The gate runs as a
    module of its own, called with the branch and the stream."""

    def __init__(self, live_scale: bool = False) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.gate = _ResidualGate(live_scale)

    def forward(self, x):
        return self.gate(self.f(x), x)


class _ResidualGate(nn.Module):
    def __init__(self, live_scale: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8))
        self.live_scale = live_scale

    def forward(self, branch, residual):
        g = self.weight.sigmoid()
        c = residual.sigmoid() if self.live_scale else torch.sqrt(1.0 + g)
        return g * branch + c * residual


def test_a_stream_scaled_by_parameters_is_still_the_stream_and_its_branch_is_dropped():
    model = nn.Sequential(_ScaledStreamBlock(), _ScaledStreamBlock(), _ScaledStreamBlock())
    x = torch.randn(4, 5, 8)
    report = apply_drop_path(model, 1.0, schedule="uniform", example_inputs=x)
    assert [s.path for s in report.sites] == ["0.f.2", "1.f.2", "2.f.2"]
    assert report.verified is True
    model.train()  # rate 1: every branch dropped; each block keeps c * x, its scaled stream
    expected = x
    for block in model:
        expected = torch.sqrt(1.0 + block.gate.weight.sigmoid()) * expected
    assert torch.allclose(model(x), expected, rtol=1e-6, atol=0)


def test_a_stream_times_a_function_of_itself_is_no_scaled_stream():
    with pytest.raises(NoResidualBranchError):
        apply_drop_path(nn.Sequential(_ScaledStreamBlock(True), _ScaledStreamBlock(True)), 0.1,
                        example_inputs=torch.randn(4, 5, 8))


class _HyperConnection(nn.Module):
    """DeepSeek V4's mHC (HY V4's without ``comb``): ``pre``, ``post`` and ``comb`` from one split of a
    projection of the ``n`` streams ``(B, L, n, D)``; returns ``post``, ``comb`` and the layer input
    ``sum_i pre_i * stream_i``."""

    def __init__(self, n: int, d: int, comb: bool) -> None:
        super().__init__()
        self.n, self.comb = n, comb
        self.fn = nn.Parameter(torch.randn((2 + n * comb) * n, n * d) / (n * d) ** 0.5)

    def forward(self, streams):
        n = self.n
        mixes = nn.functional.linear(nn.functional.rms_norm(streams.flatten(2), (n * streams.shape[-1],)), self.fn)
        pieces = mixes.split([n, n, n * n] if self.comb else [n, n], dim=-1)
        pre, post = torch.sigmoid(pieces[0]), 2 * torch.sigmoid(pieces[1])
        collapsed = (pre.unsqueeze(-1) * streams).sum(dim=2)
        if not self.comb:
            return post, collapsed
        return post, torch.softmax(pieces[2].unflatten(-1, (n, n)), dim=-1), collapsed


class _HCMixer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(torch.softmax(q @ k.transpose(-1, -2), -1) @ v), None


class _Experts(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, d, d) / d**0.5)

    def forward(self, x, weights):
        return torch.einsum("ble,edf,bld->blf", weights, self.w, x)


class _MoE(nn.Module):
    """Routed experts plus a shared one, ``routed + shared(x)`` (DeepSeek's MoE): a sum inside the branch."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate, self.experts = nn.Linear(d, 3), _Experts(d)
        self.shared = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return self.experts(torch.relu(x), torch.softmax(self.gate(x), -1)) + self.shared(x)


class _HCLayer(nn.Module):
    """A hyper-connection layer: ``comb^T @ h + post ⊗ f(x)`` (DeepSeek V4, GLM-5 Next) or, without ``comb``,
    ``(post.float() ⊗ f(x).float() + h.float()).to(dtype)`` (HY V4), once with attention, once with an MoE.
    ``near_miss``: the two terms are halves of one split, gating attention and MLP, with no stream kept."""

    def __init__(self, n: int, d: int, comb: bool, near_miss: bool = False) -> None:
        super().__init__()
        self.comb, self.near_miss = comb, near_miss
        self.attn_hc, self.ffn_hc = _HyperConnection(n, d, comb), _HyperConnection(n, d, comb)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = _HCMixer(d), _MoE(d)

    def _merge(self, hc, f, norm, h):
        if not self.comb:
            post, x = hc(h)
            out = f(norm(x))
            out = out[0] if isinstance(out, tuple) else out
            return (post.float().unsqueeze(-1) * out.float().unsqueeze(-2) + h.float()).to(h.dtype)
        post, comb, x = hc(h)
        out = f(norm(x))
        out = out[0] if isinstance(out, tuple) else out
        return post.unsqueeze(-1) * out.unsqueeze(-2) + torch.matmul(comb.transpose(-1, -2), h)

    def forward(self, h):
        if self.near_miss:
            post, comb, x = self.attn_hc(h)
            a, m = self.attn(self.norm1(x))[0], self.mlp(self.norm2(x))
            return post.unsqueeze(-1) * a.unsqueeze(-2) + comb.sum(-1).unsqueeze(-1) * m.unsqueeze(-2)
        h = self._merge(self.attn_hc, self.attn, self.norm1, h)
        return self._merge(self.ffn_hc, self.mlp, self.norm2, h)


class _HCStack(nn.Module):
    def __init__(self, comb: bool = True, n: int = 3, d: int = 8, depth: int = 2, near_miss: bool = False) -> None:
        super().__init__()
        self.n = n
        self.embed = nn.Linear(d, d)
        self.layers = nn.ModuleList([_HCLayer(n, d, comb, near_miss) for _ in range(depth)])

    def forward(self, x):
        h = self.embed(x).unsqueeze(2).expand(-1, -1, self.n, -1).contiguous()
        for layer in self.layers:
            h = layer(h)
        return h.mean(dim=2)


def _mixed_streams_only(model: _HCStack, x):
    """The output with every branch term ``post ⊗ f(x)`` removed: only the mixed streams ``comb^T @ h``."""
    h = model.embed(x).unsqueeze(2).expand(-1, -1, model.n, -1).contiguous()
    for layer in model.layers:
        for hc in (layer.attn_hc, layer.ffn_hc):
            h = torch.matmul(hc(h)[1].transpose(-1, -2), h) if layer.comb else h
    return h.mean(dim=2)


@pytest.mark.parametrize("comb", [True, False])
def test_hyper_connection_branches_are_dropped_at_the_layer_output_keeping_the_mixed_stream(comb):
    # New stream = comb^T @ h + post ⊗ f(x): a per-sample multiplier on f(x) before the broadcast product is
    # one on the branch term, so the layer's attention and MoE (not the experts inside it, not the
    # hyper-connection's post) carry drop path, and the mixed stream is kept.
    torch.manual_seed(0)
    model, x = _HCStack(comb), torch.randn(64, 5, 8)
    with torch.no_grad():
        expected = model(x)
    report = apply_drop_path(model, 0.5, schedule="uniform", example_inputs=x[:4])
    assert [(s.block, s.path, s.output_index) for s in report.sites] == [
        (b, f"layers.{b}.{part}", index) for b in range(2) for part, index in (("attn", (0,)), ("mlp", ()))
    ]
    assert [s.path for s in report.skipped] == ["layers.0.mlp.shared", "layers.1.mlp.shared"]  # routed + shared
    assert report.verified is True
    seen: list = []
    for layer in model.layers:  # registered after drop path's hooks: they see the dropped outputs
        layer.attn.register_forward_hook(lambda m, a, out: seen.append(out[0]))
        layer.mlp.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)  # eval: bitwise unchanged
        first = seen[0]
        seen.clear()
        model.train()(x)
        dropped = torch.stack([(out == 0).flatten(1).all(1) for out in seen])  # (sites, samples)
        assert 0.35 < dropped.float().mean().item() < 0.65  # 256 decisions at p = 0.5
        kept = ~dropped[0]
        assert torch.equal(seen[0][kept], 2 * first[kept])  # the first layer's input is the same: kept * 1 / keep
        set_drop_path_rate(model, 1.0)
        assert torch.equal(model(x), _mixed_streams_only(model, x))  # every branch term removed, the streams kept


def test_hyper_connection_near_misses_are_not_taken():
    # Two terms gated by pieces of one split, attn and MLP of one collapsed input, with no stream kept: parts of
    # one branch (like ViT-22B's), even though each is a broadcast product of a module output.
    with pytest.raises(NoResidualBranchError):
        apply_drop_path(_HCStack(near_miss=True), 0.1, example_inputs=torch.randn(4, 5, 8))

    # A branch broadcast over the batch (a module that pools the samples) has no per-sample drop: left out (with
    # batch_dim given; otherwise the samples' dependence on each other refuses the batch dimension).
    class Pooled(_HCMixer):
        def forward(self, x):
            return super().forward(x)[0].mean(0, keepdim=True), None

    model = _HCStack()
    for layer in model.layers:
        layer.attn = Pooled(8)
    with pytest.warns(UserWarning, match="do not keep whole samples"):
        report = apply_drop_path(model, 0.1, example_inputs=torch.randn(4, 5, 8), batch_dim=0)
    assert [s.path for s in report.sites] == ["layers.0.mlp", "layers.1.mlp"]
    assert {s.path for s in report.skipped} >= {"layers.0.attn", "layers.1.attn"}


def test_hyper_connection_branch_through_float_casts_in_bfloat16():
    # HY V4 runs the merge in float32: post.float() ⊗ f(x).float() + h.float(). The casts are per sample alike,
    # so drop path still goes on the layer's modules, not on the hyper-connection's post.
    torch.manual_seed(0)
    model, x = _HCStack(comb=False).to(torch.bfloat16), torch.randn(4, 5, 8, dtype=torch.bfloat16)
    report = apply_drop_path(model, 0.1, example_inputs=x)
    assert [s.path for s in report.sites] == ["layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]
    assert report.verified is True


class _PosAttention(nn.Module):
    """DETR's attention: queries (and keys, in self-attention) read ``h + pos``, values read ``h``."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, h, pos, memory=None):
        query = h + pos
        keys, values = (query, h) if memory is None else (memory, memory)
        weights = torch.softmax(self.q(query) @ self.k(keys).transpose(1, 2), -1)
        return self.out(weights @ self.v(values))


class _PostNormPosLayer(nn.Module):  # DETR's encoder layer
    def __init__(self):
        super().__init__()
        self.attn, self.mlp, self.norm1, self.norm2 = _PosAttention(), _mlp(), nn.LayerNorm(8), nn.LayerNorm(8)

    def forward(self, h, pos):
        h = self.norm1(h + self.attn(h, pos))
        return self.norm2(h + self.mlp(h))


class _PreNormCrossLayer(nn.Module):  # Table Transformer's decoder: norm(h) + query_pos, a parameter, as queries
    def __init__(self):
        super().__init__()
        self.cross, self.mlp, self.norm1, self.norm2 = _PosAttention(), _mlp(), nn.LayerNorm(8), nn.LayerNorm(8)

    def forward(self, h, query_pos, memory):
        h = h + self.cross(self.norm1(h), query_pos, memory)
        return h + self.mlp(self.norm2(h))


def test_position_embeddings_added_to_the_queries_are_no_stream_and_the_layer_before_no_branch():
    # From the second layer on, pos (live) and query_pos (a parameter) are ancestors of h through earlier queries, so
    # h + pos looked like x + f(x) with the whole previous layer (or its norm) as f: a dropped sample's queries would
    # be pos alone. Its sum feeds only an attention's queries, while h goes on by itself (values, residual) or the
    # stream is a constant: a side value, not a merge.
    class Detr(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.pos_embed, self.tgt = nn.Linear(8, 8), nn.Linear(2, 8), nn.Linear(8, 8)
            self.encoder = nn.ModuleList(_PostNormPosLayer() for _ in range(3))
            self.query_pos = nn.Parameter(torch.randn(4, 8))
            self.decoder = nn.ModuleList(_PreNormCrossLayer() for _ in range(3))

        def forward(self, x, coords):
            h, pos = self.embed(x), self.pos_embed(coords)
            for layer in self.encoder:
                h = layer(h, pos)
            q, query_pos = self.tgt(x[:, :4]), self.query_pos.expand(x.shape[0], -1, -1)
            for layer in self.decoder:
                q = layer(q, query_pos, h)
            return q

    torch.manual_seed(0)
    report = find_residual_branches(Detr(), (torch.randn(2, 6, 8), torch.randn(2, 6, 2)))
    assert [s.path for s in report.sites] == [
        f"{part}.{i}.{branch}" for part, first in (("encoder", "attn"), ("decoder", "cross")) for i in range(3)
        for branch in (first, "mlp.2")
    ]
    assert not report.skipped


def test_a_residual_block_nested_in_a_branch_stays_a_merge_though_its_input_goes_on():
    # x + g(inner(x)), inner(x) = x + f(x): the inner sum feeds only the outer branch and x is read again by the outer
    # merge, as in DETR's h + pos; but the inner block returns its sum, which makes it a residual block.
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = _mlp()

        def forward(self, x):
            return x + self.f(x)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.g = Inner(), nn.Linear(8, 8)

        def forward(self, x):
            return x + self.g(self.inner(x))

    report = find_residual_branches(nn.Sequential(*(Outer() for _ in range(3))), torch.randn(2, 5, 8))
    assert [s.path for s in report.sites] == [p for i in range(3) for p in (f"{i}.inner.f.2", f"{i}.g")]


def test_two_branches_of_the_mid_layer_stream_summed_before_one_norm_are_one_branch():
    # DiffusionGemma's decoder layer: h = x + attn(x); h + norm(mlp(h) + moe(h)). The two paths start from the stream
    # the first merge made, so neither is a shortcut of the layer's input x (mlp(h) read as the shortcut of moe(h)
    # dropped the MoE output alone, inside the branch that is dropped as a whole).
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.mlp, self.moe = _mlp(), _mlp(), nn.Sequential(nn.LayerNorm(8), _mlp(), nn.Linear(8, 8))
            self.post_norm = nn.LayerNorm(8)

        def forward(self, x):
            h = x + self.attn(x)
            return h + self.post_norm(self.mlp(h) + self.moe(h))

    report = find_residual_branches(nn.Sequential(*(Layer() for _ in range(3))), torch.randn(2, 5, 8))
    assert [s.path for s in report.sites] == [p for i in range(3) for p in (f"{i}.attn.2", f"{i}.post_norm")]


def test_a_residual_helper_that_shifts_and_scales_both_operands_is_a_merge():
    # Zaya's layer hands its branch output and its stream to a module that returns (f + b) * s + (x + c) * t:
    # the stream reaches the sum through a constant shift and a per-channel scale, the branch through the same.
    # Neither was seen through its shift, and ZayaModel failed with NoResidualBranchError.
    class Scaling(nn.Module):
        def __init__(self):
            super().__init__()
            self.b, self.c = nn.Parameter(torch.zeros(8)), nn.Parameter(torch.zeros(8))
            self.s, self.t = nn.Parameter(torch.ones(8)), nn.Parameter(torch.ones(8))

        def forward(self, h, x):
            return (h + self.b) * self.s + (x + self.c) * self.t

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2, self.attn, self.mlp = nn.LayerNorm(8), nn.LayerNorm(8), _mlp(), _mlp()
            self.post_attn, self.post_mlp = Scaling(), Scaling()

        def forward(self, x):
            x = self.post_attn(self.attn(self.norm1(x)), x)
            return self.post_mlp(self.mlp(self.norm2(x)), x)

    model = nn.Sequential(*(Layer() for _ in range(3)))
    report = apply_drop_path(model, 0.1, example_inputs=torch.randn(2, 5, 8))
    assert report.verified is True
    assert [s.path for s in report.sites] == [p for i in range(3) for p in (f"{i}.attn.2", f"{i}.mlp.2")]


class _TwoWayBlock(nn.Module):
    """EdgeTAM's two-way block: it returns its cross-attention's output beside the keys that output was added to."""

    def __init__(self):
        super().__init__()
        self.mlp, self.cross, self.norm = _mlp(), _mlp(), nn.LayerNorm(8)

    def forward(self, q, k):
        q = q + self.mlp(q)
        out = self.cross(k + q.mean(1, keepdim=True))
        return q, self.norm(k + out), out


def test_a_block_that_returns_its_branch_after_adding_it_is_not_where_it_is_dropped():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(_TwoWayBlock() for _ in range(3))

        def forward(self, q, k):
            for layer in self.layers:
                q, k, _ = layer(q, k)
            return q + k.mean(1, keepdim=True)

    model, inputs = Model(), (torch.randn(2, 3, 8), torch.randn(2, 5, 8))
    report = apply_drop_path(model, 0.1, example_inputs=inputs)
    assert report.verified is True  # (it was with the site on the block too: eval cannot tell)
    # Hooked on the block's third output, the mask came after the block had added the branch: no drop at all.
    assert [s.path for s in report.sites] == [p for i in range(3) for p in (f"layers.{i}.mlp.2", f"layers.{i}.cross.2")]
    assert idle_sites(model, *inputs) == []


class _SummedLayer(nn.Module):
    """GraniteMoeHybrid: h + (moe(n(h)) + mlp(n(h))) * c, two branches of one merge through a scaling. GraniteSpeech5's
    subsampling block: after h = h + attn(h), pool(h) + conv(norm(h)), a fork of the stream the layer's own merge
    made (the fork rule once went through that stream and lost it)."""

    def __init__(self):
        super().__init__()
        self.attn, self.conv, self.moe, self.mlp = _mlp(), _mlp(), _mlp(), _mlp()
        self.n1, self.n2, self.n3 = nn.LayerNorm(8), nn.LayerNorm(8), nn.LayerNorm(8)

    def forward(self, h):
        h = h + self.attn(self.n1(h))
        h = h.unfold(1, 2, 2).mean(-1) + self.conv(self.n2(h))[:, : h.shape[1] // 2]
        n = self.n3(h)
        return h + (self.moe(n) + self.mlp(n)) * 0.5


def test_branches_summed_then_scaled_and_a_pooled_shortcut_after_a_merge_are_found():
    report = find_residual_branches(nn.Sequential(*(_SummedLayer() for _ in range(2))), torch.randn(2, 8, 8))
    assert [s.path for s in report.sites] == [f"{i}.{m}.2" for i in range(2) for m in ("attn", "conv", "moe", "mlp")]


def test_a_residual_block_whose_output_feeds_only_a_branch_stays_a_merge():
    # HRNet's head: y = incre(y1) + down(bottleneck(y0)). The bottleneck's relu(x + f(x)) reaches no stream and no
    # output except through that branch, as DETR's h + pos; but the block returns an activation of its sum.
    class Bottleneck(nn.Module):
        def __init__(self):
            super().__init__()
            self.f, self.down = _mlp(), nn.Linear(8, 8)

        def forward(self, x):
            return torch.relu(self.down(x) + self.f(x))

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Bottleneck() for _ in range(2))
            self.down, self.incre = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.incre(x) + self.down(self.blocks[1](self.blocks[0](x)))

    report = find_residual_branches(Head(), torch.randn(2, 5, 8))
    assert [s.path for s in report.sites] == ["blocks.0.f.2", "blocks.1.f.2"]
