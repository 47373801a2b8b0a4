"""Shared test helpers: model snapshots for exact-undo / atomicity checks, and small models."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@contextlib.contextmanager
def example_module(filename: str) -> Iterator[ModuleType]:
    """``examples/<filename>`` imported as a module (registered while in use: dataclasses look their
    module up), removed from ``sys.modules`` afterwards."""
    spec = importlib.util.spec_from_file_location(f"example_{Path(filename).stem}", EXAMPLES / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def hook_count(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        for d in (
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            m._backward_pre_hooks,
            m._forward_hooks_with_kwargs,
            m._forward_pre_hooks_with_kwargs,
            m._forward_hooks_always_called,
        ):
            total += len(d)
    return total


class ModelSnapshot:
    """Everything that must be identical after an undo or a failed call (the PEFT unload checklist)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = [(name, m) for name, m in model.named_modules(remove_duplicate=False)]
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.state_ids = {k: id(v) for k, v in model.state_dict(keep_vars=True).items()}
        self.flags = [m.training for _, m in self.modules]
        self.hooks = hook_count(model)
        self.rng = torch.get_rng_state()

    def assert_same(self) -> None:
        now = [(name, m) for name, m in self.model.named_modules(remove_duplicate=False)]
        assert [n for n, _ in now] == [n for n, _ in self.modules], "module paths changed"
        assert all(a is b for (_, a), (_, b) in zip(now, self.modules)), "module objects changed"
        state = self.model.state_dict()
        assert list(state) == list(self.state), "state_dict keys changed"
        for k, v in state.items():
            assert torch.equal(v, self.state[k]), f"state_dict value {k} changed"
        assert {k: id(v) for k, v in self.model.state_dict(keep_vars=True).items()} == self.state_ids
        assert [m.training for _, m in now] == self.flags, "train/eval flags changed"
        assert hook_count(self.model) == self.hooks, "hooks left behind"
        assert torch.equal(torch.get_rng_state(), self.rng), "global RNG advanced"


def attached(model: nn.Module) -> list:
    """The DropPaths apply_drop_path attached (those with an undo record), in block order."""
    from droppath_surgery import DropPath

    found = [m for m in model.modules() if isinstance(m, DropPath) and m.patch is not None]
    return sorted(found, key=lambda d: min((b.block, b.branch) for b in d.patch.site.branches))


def eval_output(model: nn.Module, *args, **kwargs):
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(*args, **kwargs)
    model.train(was)
    return out


def bitwise_equal(a, b) -> bool:
    from droppath_surgery.verify import compare_outputs  # the engine's own comparison, white-box

    return compare_outputs(a, b) == []


def idle_sites(model: nn.Module, *args, **kwargs) -> list[str]:
    """The attached DropPaths whose output the model does not use (the sweep's oracle, ``unused_sites``)."""
    from droppath_coverage.oracles import unused_sites  # (scripts/ is on the path: conftest.py)

    unused = unused_sites(model, args, kwargs)
    assert unused is not None, "the model's output does not change with its inputs: no site can show its use"
    return unused


class Block(nn.Module):
    """A pre-norm transformer-like block: x + attn(norm(x)), x + mlp(norm(x))."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Residual blocks in a ModuleList, plus a residual head outside the block stack."""

    def __init__(self, depth: int = 4, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.head_mlp = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        x = x + self.head_mlp(x)  # a residual in the head: not part of the block stack
        return self.head(x.mean(1))


def patched_and_verified(model):
    """``apply_drop_path(model, 0.1)`` on its automatic inputs, warnings silenced, asserting that it found
    branches and verified the eval output; the report."""
    import warnings

    from droppath_surgery import apply_drop_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = apply_drop_path(model, 0.1)
    assert report.verified is True
    assert len(report.sites) > 0
    return report
