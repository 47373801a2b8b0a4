"""Attach DropPath to traced residual branches, and take it off again.

Choosing where to attach (``plan_attachments``): each branch has an end chain, the module calls that
returned its output, innermost first. A module can carry drop path for a set of branches only if
*every* call it made in the traced pass is the end of one of those branches and they all belong to
the same block (so one rate fits) and share a batch dimension; containers are never used. We pick,
for each branch, the architecture's own drop path slot if it is such a module, else the outermost
one, whose attachment does not also cover a branch that is already covered, so every branch is
dropped exactly once per forward. A module shared between a
branch end and other uses (HF Swin's ``dropout``, also applied to attention windows) is therefore
never chosen, and the next module inward (its ``mlp``) is.

How to attach: a placeholder (``nn.Identity``, a dropout with ``p == 0``, or a parameterless
DropPath-like module such as timm's ``DropPath`` or torchvision's ``StochasticDepth``) whose output
is the branch tensor is *replaced* by a ``DropPath``; that is exact in eval mode and changes no
``state_dict`` entry. Otherwise a ``DropPath`` child named ``surgery_drop_path`` is registered on the
module (it has no parameters or persistent buffers, so ``state_dict`` is unchanged) and a forward hook
drops the branch tensor in the module's output.

Undo state lives on the modules themselves, as ``torch.nn.utils.parametrize`` does: a replacing
DropPath remembers the original module object, and hooks are recognised by their type. So
``remove_drop_path`` needs no handle and puts back the very same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .errors import UnsupportedModelError
from .ops import DropPath, is_drop_path_slot, is_placeholder
from .report import Site, Skipped, Target
from .skip import SkipDropPath, SkipEntry, remove_entries
from .trace import CONTAINERS, Branch, Trace

__all__ = ["Attachment", "PatchInfo", "plan_attachments", "attach", "detach", "patched_modules", "info_of", "sites_for", "CHILD_NAME"]

CHILD_NAME = "surgery_drop_path"
_ORIGINAL = "_surgery_original"  # on a replacing DropPath: the module it replaced
_META = "_surgery_sites"  # on every DropPath we attach: its Site records and the block count


@dataclass
class PatchInfo:
    """Kept on each DropPath this library attaches: what it covers, for reports and re-scheduling."""

    sites: list[Site]
    num_blocks: int
    schedule: str
    notes: list[str] = field(default_factory=list)  # e.g. why a branch masks instead of skipping


@dataclass
class Attachment:
    """Where one DropPath goes, and which branches it covers."""

    module: nn.Module
    path: str
    kind: str  # "replace" or "hook"
    output_index: tuple
    branches: list[Branch] = field(default_factory=list)

    @property
    def block_index(self) -> int:
        return self.branches[0].block_index

    @property
    def batch_dim(self) -> int:
        return self.branches[0].batch_dim  # type: ignore[return-value]


def plan_attachments(trace: Trace, root: nn.Module) -> tuple[list[Attachment], list[Skipped]]:
    """Choose one module per branch (or per group of same-block branches) to carry drop path."""
    refs: dict[int, list[tuple[int, Any]]] = {}  # id(module) -> [(branch number, end)]
    for b, br in enumerate(trace.branches):
        for end in br.ends:
            refs.setdefault(id(end.module), []).append((b, end))

    def usable(module: nn.Module) -> bool:
        if isinstance(module, CONTAINERS):
            return False
        entries = refs[id(module)]
        calls = {end.call for _, end in entries}
        if len(calls) != trace.calls.get(id(module), 0):
            return False  # called elsewhere too, e.g. on attention windows
        owners = [trace.branches[b] for b, _ in entries]
        return (
            len({o.block_index for o in owners}) == 1
            and len({o.batch_dim for o in owners}) == 1
            and len({end.output_index for _, end in entries}) == 1
        )

    covered: dict[int, Attachment] = {}
    attachments: list[Attachment] = []
    skipped: list[Skipped] = []
    for b, br in enumerate(trace.branches):
        if b in covered:
            continue
        # The architecture's own drop path slot first (``drop_path1`` rather than a ``layer_scale1``
        # Identity on the same tensor), then the outermost module.
        candidates = sorted(reversed(br.ends), key=lambda e: not is_drop_path_slot(e.module, e.path))
        chosen = None
        for end in candidates:
            if not usable(end.module):
                continue
            group = sorted({i for i, _ in refs[id(end.module)]})
            if any(i in covered for i in group):
                continue
            chosen = end
            break
        if chosen is None:
            skipped.append(
                Skipped(
                    br.ends[-1].path,
                    br.block_path,
                    "no module of its own ends this branch (every module that returns it is also used "
                    "elsewhere), so drop path cannot be attached exactly",
                )
            )
            continue
        module = chosen.module
        kind = "replace" if is_placeholder(module) and chosen.output_index == () and chosen.path else "hook"
        att = Attachment(module, chosen.path, kind, chosen.output_index)
        for i in sorted({i for i, _ in refs[id(module)]}):
            covered[i] = att
            att.branches.append(trace.branches[i])
        attachments.append(att)
    attachments.sort(key=lambda a: (a.block_index, min(br.branch for br in a.branches)))
    return attachments, skipped


class DropBranchOutput:
    """Forward hook: drops the branch tensor in a module's output with the module's DropPath child."""

    def __init__(self, output_index: tuple) -> None:
        self.output_index = tuple(output_index)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        drop = module._modules[CHILD_NAME]
        return _replace_at(output, self.output_index, drop)

    def __repr__(self) -> str:
        return f"DropBranchOutput(output_index={self.output_index!r})"


def _replace_at(obj: Any, index: tuple, fn) -> Any:
    if not index:
        return fn(obj) if isinstance(obj, Tensor) else obj
    head, rest = index[0], index[1:]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return obj[:head] + (_replace_at(obj[head], rest, fn),) + obj[head + 1 :]
    if isinstance(obj, list):
        out = list(obj)
        out[head] = _replace_at(obj[head], rest, fn)
        return out
    if isinstance(obj, dict):
        out = obj.copy()  # keeps the type of HF ModelOutput
        out[head] = _replace_at(obj[head], rest, fn)
        return out
    if isinstance(obj, tuple):  # namedtuple
        values = list(obj)
        values[head] = _replace_at(obj[head], rest, fn)
        return type(obj)(*values)
    return obj


def _registrations(root: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every registered child, shared modules included."""
    return [(parent, name, child) for parent in root.modules() for name, child in parent._modules.items() if child is not None]


def target_of(att: Attachment) -> Target:
    """What a schedule needs to know of an attachment to rate it."""
    return Target(att.path, att.kind, att.block_index, att.branches[0].block_path)


def sites_for(att: Attachment, rate: float) -> list[Site]:
    return [
        Site(
            path=att.path,
            block=br.block_index,
            rate=rate,
            kind=att.kind,
            batch_dim=br.batch_dim,  # type: ignore[arg-type]
            block_path=br.block_path,
            branch=br.branch,
            replaced=type(att.module).__name__,
            output_index=att.output_index,
            shape=br.shape,
        )
        for br in att.branches
    ]


def attach(
    root: nn.Module,
    attachments: list[Attachment],
    rates: list[float],
    num_blocks: int,
    *,
    schedule: str = "linear",
    mode: str = "row",
    scale_by_keep: bool = True,
    skip: dict | None = None,
) -> list[DropPath]:
    """Attach a DropPath for every attachment, at the rate of the same position in ``rates`` (a
    ``SkipDropPath`` with the options in ``skip`` when given), and return them, in the order of
    ``attachments``; on any error, undo what was done and re-raise."""
    registrations = _registrations(root)
    drops: list[DropPath] = []
    try:
        for att, rate in zip(attachments, rates, strict=True):
            options = dict(batch_dim=att.batch_dim, mode=mode, scale_by_keep=scale_by_keep)
            drop = SkipDropPath(rate, **skip, **options) if skip is not None else DropPath(rate, **options)
            drops.append(drop)
            drop.train(att.module.training)
            object.__setattr__(drop, _META, PatchInfo(sites_for(att, rate), num_blocks, schedule))
            if att.kind == "replace":
                object.__setattr__(drop, _ORIGINAL, att.module)
                for parent, name, child in registrations:
                    if child is att.module:
                        parent._modules[name] = drop
            else:
                if CHILD_NAME in att.module._modules or hasattr(att.module, CHILD_NAME):
                    raise UnsupportedModelError(
                        f"{att.path} already has an attribute {CHILD_NAME!r}, where drop path would be "
                        f"attached; rename that attribute, or leave this branch out with filter_fn."
                    )
                att.module.add_module(CHILD_NAME, drop)
                att.module.register_forward_hook(DropBranchOutput(att.output_index))
    except BaseException:
        detach(root)
        raise
    return drops


def patched_modules(root: nn.Module, *, ordered: bool = True) -> list[DropPath]:
    """Every DropPath attached by this library, each once (in block order when ``ordered``)."""
    found = [m for m in root.modules() if isinstance(m, DropPath) and _META in m.__dict__]
    if ordered:
        found.sort(key=lambda d: min((s.block, s.branch) for s in info_of(d).sites))
    return found


def info_of(drop: DropPath) -> "PatchInfo":
    """The sites a DropPath attached by this library covers, and the schedule they came from."""
    return getattr(drop, _META)


def detach(root: nn.Module) -> int:
    """Remove every DropPath this library attached, and the hooks that go with it (``SkipEntry``
    pre-hooks of skipping branches included); put back the original modules. Returns the number of
    DropPath modules removed."""
    removed = 0
    remove_entries(root)
    for parent, name, child in _registrations(root):
        if isinstance(child, DropPath) and hasattr(child, _ORIGINAL):
            parent._modules[name] = getattr(child, _ORIGINAL)
            removed += 1
    for module in list(root.modules()):
        child = module._modules.get(CHILD_NAME)
        if isinstance(child, DropPath) and hasattr(child, _META):
            del module._modules[CHILD_NAME]
            removed += 1
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, DropBranchOutput):
                module._forward_hooks.pop(key, None)
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
    return removed


@dataclass
class Snapshot:
    """The exact patched state of a model, to put back if a later step fails."""

    registrations: list[tuple[nn.Module, str, nn.Module]]
    hooks: list[tuple[nn.Module, Any, Any]]
    pre_hooks: list[tuple[nn.Module, Any, Any]] = field(default_factory=list)


def snapshot_patches(root: nn.Module) -> Snapshot:
    regs = [(p, n, c) for p, n, c in _registrations(root) if isinstance(c, DropPath) and hasattr(c, _META)]
    hooks = [
        (m, key, hook)
        for m in root.modules()
        for key, hook in m._forward_hooks.items()
        if isinstance(hook, DropBranchOutput)
    ]
    pre_hooks = [
        (m, key, hook) for m in root.modules() for key, hook in m._forward_pre_hooks.items() if isinstance(hook, SkipEntry)
    ]
    return Snapshot(regs, hooks, pre_hooks)


def restore_patches(snapshot: Snapshot) -> None:
    """Put back a snapshot taken before ``detach`` (the same DropPath and hook objects)."""
    for parent, name, child in snapshot.registrations:
        parent._modules[name] = child
    for module, key, hook in snapshot.hooks:
        module._forward_hooks[key] = hook
    for module, key, hook in snapshot.pre_hooks:
        module._forward_pre_hooks[key] = hook
        module._forward_pre_hooks_with_kwargs[key] = True
