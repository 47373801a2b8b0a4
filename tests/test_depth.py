"""Stacks and the per-stack linear schedule at more than 2 layers: the sweep builds every model with 2
layers, where a rule that sees each layer as a stack of its own still looks like a ramp's first block.
Toy models (pure torch) for the rules, tiny Hugging Face configs at 2 and 6 layers for the models that
found them (scripts/depth_check.py runs every type the sweep patches)."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T
from torch import nn
from training_fixtures import single_thread  # noqa: F401  (autouse: tiny models run faster on one thread)

from droppath_surgery import apply_drop_path, find_residual_branches

RATE = 0.1


def _mlp(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))


class _MixLayer(nn.Module):
    """NeoMME's layer: the input of its attention mixes the stream with the embeddings, ``l0 * h + l1 * h0``.
    From the second layer on, ``h0`` is an ancestor of ``h``, so the mix looked like a merge on the stream ``h0``
    with the whole previous layer as its branch; it feeds only the attention while ``h`` goes on (a side value)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.5]))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = _mlp(d), _mlp(d)

    def forward(self, h: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        mixed = self.lambdas[0] * h + self.lambdas[1] * h0
        h = h + self.attn(self.norm1(mixed))
        return h + self.mlp(self.norm2(h))


class _MixModel(nn.Module):
    def __init__(self, n: int, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.layers = nn.ModuleList(_MixLayer(d) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = h0 = self.embed(x)
        for layer in self.layers:
            h = layer(h, h0)
        return h


def _ramp(n: int) -> list[float]:
    return [RATE * i / (n - 1) for i in range(n)]


def _stack_rates(report) -> dict[int, list[float]]:
    """Per stack, its blocks' rates in block order."""
    out: dict[int, dict[int, float]] = {}
    for s in report.sites:
        out.setdefault(s.stack, {})[s.block] = s.rate
    return {k: [r for _, r in sorted(v.items())] for k, v in sorted(out.items())}


@pytest.mark.parametrize("n", [2, 6])
def test_a_mix_with_the_embeddings_is_no_branch_and_the_layers_are_one_stack(n):
    # The mix was a site (the previous layer's output dropped from a stream of embeddings: not stochastic depth),
    # and, as the first branch of layer k >= 1 with a stream from no block, it made every layer a stack of one block:
    # all rates 0 under "linear".
    report = find_residual_branches(_MixModel(n), torch.randn(2, 5, 8), rate=RATE)
    assert {s.stack for s in report.sites} == {0}
    assert _stack_rates(report) == {0: pytest.approx(_ramp(n))}
    assert [s.path for s in report.sites] == [f"layers.{i}.{b}.2" for i in range(n) for b in ("attn", "mlp")]


class _Stream(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.norm, self.f = nn.LayerNorm(d), _mlp(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(self.norm(x))


class _Cross(nn.Module):
    """A cross layer on two streams (LXMERT's): a's branch runs first, then b's, each reading the other."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.na, self.nb = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fa, self.fb = _mlp(d), _mlp(d)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a2 = a + self.fa(self.na(a) + b)
        return a2, b + self.fb(self.nb(b) + a)


class _TwoStreams(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.ea, self.eb = nn.Linear(d, d), nn.Linear(d, d)
        self.a = nn.ModuleList(_Stream(d) for _ in range(3))
        self.b = nn.ModuleList(_Stream(d) for _ in range(2))
        self.x = nn.ModuleList(_Cross(d) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.ea(x), self.eb(x)
        for layer in self.a:
            a = layer(a)
        for layer in self.b:
            b = layer(b)
        for layer in self.x:
            a, b = layer(a, b)
        return a + b


def test_a_layer_on_two_streams_carries_on_the_stack_of_its_first_branch():
    # Both branches of a cross layer start from earlier blocks (a's last and b's last, which ran later): the
    # first branch that ran decides, as before the rule asked every branch (LXMERT's stacks unchanged).
    report = find_residual_branches(_TwoStreams(), torch.randn(2, 5, 8), rate=RATE)
    stacks = {s.block_path: s.stack for s in report.sites}
    assert [stacks[f"a.{i}"] for i in range(3)] == [0, 0, 0] and [stacks[f"b.{i}"] for i in range(2)] == [1, 1]
    assert stacks["x.0"] == stacks["x.1"] == 0
    assert _stack_rates(report) == {0: pytest.approx(_ramp(5)), 1: pytest.approx(_ramp(2))}


class _Decoder(nn.Module):
    """A decoder layer: self branch on its own stream first, then a cross branch on the same stream reading
    the encoder's output (a stream computed from no earlier block: a stack of its own)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.f, self.g = _mlp(d), _mlp(d)

    def forward(self, y: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        y = y + self.f(self.n1(y))
        return y + self.g(self.n2(y) + memory)


class _EncoderDecoder(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.ee, self.ed = nn.Linear(d, d), nn.Linear(d, d)
        self.encoder = nn.ModuleList(_Stream(d) for _ in range(3))
        self.decoder = nn.ModuleList(_Decoder(d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.ee(x)
        for layer in self.encoder:
            m = layer(m)
        y = self.ed(x)
        for layer in self.decoder:
            y = layer(y, m)
        return y


def test_a_decoder_whose_branches_read_the_encoder_is_a_stack_of_its_own():
    report = find_residual_branches(_EncoderDecoder(), torch.randn(2, 5, 8), rate=RATE)
    assert _stack_rates(report) == {0: pytest.approx(_ramp(3)), 1: pytest.approx(_ramp(4))}


# -- Hugging Face, tiny configs at 2 and 6 layers -------------------------------------------------------


def _neomme(n: int) -> nn.Module:
    return T.NeoMMEModel(T.NeoMMEConfig(vocab_size=99, hidden_size=32, num_hidden_layers=n, num_attention_heads=2,
                                        head_dim=16, num_key_value_heads=1, intermediate_size=64,
                                        layer_types=["full_attention"] * n))


def _jamba(n: int) -> nn.Module:  # one attention layer, the last; experts every other layer
    return T.JambaModel(T.JambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=n, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=64, num_experts=2, num_experts_per_tok=1,
                                      expert_layer_period=2, expert_layer_offset=1, attn_layer_period=n,
                                      attn_layer_offset=n - 1, mamba_d_state=4, mamba_dt_rank=4, use_cache=False))


def _zamba2(n: int) -> nn.Module:  # Mamba layers, the last one hybrid (the shared transformer block)
    return T.Zamba2Model(T.Zamba2Config(vocab_size=99, hidden_size=32, num_hidden_layers=n, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64, mamba_d_state=4, mamba_headdim=8,
                                        n_mamba_heads=8, layers_block_type=["mamba"] * (n - 1) + ["hybrid"],
                                        hybrid_layer_ids=[n - 1], use_cache=False))


def _t5(n: int) -> nn.Module:
    return T.T5Model(T.T5Config(vocab_size=99, d_model=32, d_kv=16, d_ff=64, num_layers=n, num_decoder_layers=n,
                                num_heads=2, decoder_start_token_id=0))


# type: (model at n layers, sites per layer of its one stack (or per stack), extra sites, stacks)
HF = {
    "neomme": (_neomme, 2, 0, 1),  # attention and MLP; the mix with the embeddings is no branch
    "jamba": (_jamba, 2, 0, 1),
    # One Mamba branch a layer. The hybrid layer's shared transformer output is added to its Mamba branch's input
    # (h + T(h) feeds the mixer; the residual is h): inside that branch, not one of its own.
    "zamba2": (_zamba2, 1, 0, 1),
    "t5": (_t5, 5, 0, 2),  # encoder 2 a layer, decoder 3: two stacks
}


@pytest.mark.parametrize("n", [2, 6])
@pytest.mark.parametrize("name", list(HF))
def test_hf_stacks_ramp_at_depth(name, n):
    build, per_layer, extra, stacks = HF[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = apply_drop_path(build(n), RATE)
    assert report.verified is True
    assert len(report.sites) == per_layer * n + extra
    rates = _stack_rates(report)
    assert len(rates) == stacks
    for ramp in rates.values():  # each stack one block a layer, from 0 to the rate (never all zero)
        assert ramp == pytest.approx(_ramp(n))


# -- the depth check's judge (scripts/droppath_coverage/depth.py) ------------------------------------------


def _depth_module():
    from droppath_coverage import depth  # (scripts/ is on the path: conftest.py)

    return depth


def _judged(*depths):
    depth = _depth_module()
    check = depth.TypeCheck("t", [depth.Depth(**d) for d in depths])
    depth.judge(check)
    return check


def _at(n, stacks, sites_per_block=2, blocks=None):
    """A depth record: ``stacks`` holds each stack's block rates, numbered one after another."""
    numbered, first = [], 0
    for rates in stacks:
        numbered.append(list(range(first, first + len(rates))))
        first += len(rates)
    return {"asked": n, "layers": n, "sites": sites_per_block * first, "blocks": blocks or first, "stacks": stacks,
            "stack_sites": [sites_per_block * len(r) for r in stacks], "stack_blocks": numbered}


def test_depth_check_flags_layers_seen_as_stacks_of_their_own():
    # NeoMME before the stack rule asked every branch: one stack per layer, every rate 0
    check = _judged(_at(2, [[0.0]] * 2), _at(6, [[0.0]] * 6))
    assert any("every rate is 0" in p for p in check.problems)
    assert any("stacks multiply" in p for p in check.problems)
    fixed = _judged(_at(2, [_ramp(2)]), _at(6, [_ramp(6)]))
    assert fixed.problems == fixed.changes == []
    stuck = _judged(_at(6, [[0.0] * 3, _ramp(3)]))  # one stack of several blocks at rate 0
    assert stuck.problems == ["6 layers: stack 0 of 3 blocks has all-zero rates"]


def test_depth_check_ramps_end_at_the_rate_unless_the_stack_ends_in_blocks_without_sites():
    short = _ramp(6)[:5]  # the last block has no site (MobileNet's last block, without skip): counted, not rated
    assert _judged(_at(6, [short], blocks=6)).problems == []
    assert _judged(_at(6, [short], blocks=5)).problems[0].startswith("6 layers: stack 0 ends at 0.08")


def test_depth_check_lists_sites_per_block_that_change_with_depth():
    check = _judged(_at(2, [_ramp(2)]) | {"sites": 5, "stack_sites": [5]},
                    _at(6, [_ramp(6)]) | {"sites": 17, "stack_sites": [17]})
    assert check.problems == [] and check.changes == ["stack 0: 5 sites / 2 blocks at 2 layers -> 17 / 6 at 6"]
    same = _judged(_at(2, [_ramp(2)]) | {"layers": None}, _at(6, [_ramp(2)]) | {"layers": None})
    assert same.changes == [] and same.notes[0].startswith("the same model at every depth")
