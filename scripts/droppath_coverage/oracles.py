"""The oracle: where a library places drop path itself, read off a build of the model *with* drop path.

A slot is a drop-path module (class name ``DropPath`` / ``StochasticDepth``), or an ``Identity`` /
``None`` held under one of their attribute names. It belongs to its *holder*, the module whose
attribute it is (timm's block with ``self.drop_path1``, HF's layer with ``self.drop_path``). One eval
forward tells which slot calls are added to a residual while their holder runs. Nothing here uses
the engine's rules: the only engine names used are the Site fields the judge compares with.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from droppath_surgery import build_example_inputs

from .text import listing

_MISSING = object()


def is_droppath_like(module: Any) -> bool:
    name = type(module).__name__.lower()
    return "droppath" in name or "stochasticdepth" in name


def native_rate(module: Any) -> float:
    for attr in ("drop_prob", "p", "drop_rate", "drop_path_rate", "rate"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, Tensor) and value.numel() == 1:
            return float(value)
    return float("nan")


def holder_of(path: str) -> str:
    """The module that holds the attribute at ``path`` (``""``: the model itself)."""
    return path.rpartition(".")[0]


def inside(path: str, holder: str) -> bool:
    """``path`` is a module under ``holder`` (a hook on the holder itself drops its output, a branch of
    the module around it, not one of its own)."""
    return not holder or path.startswith(holder + ".")


@dataclass
class Slot:
    path: str
    rate: float
    holds: str  # class name of what the native build holds there (DropPath, Identity, None)
    merged: list[int] = field(default_factory=list)  # indices of its calls whose output is added to a residual
    off_residual: int = 0  # calls whose output is never added to another tensor while its holder runs
    order: int = -1  # first call in the forward

    @property
    def holder(self) -> str:
        return holder_of(self.path)

    @property
    def calls(self) -> int:
        """Calls merged into a residual: the branches this slot drops."""
        return len(self.merged)


_ADDS = {torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__iadd__, Tensor.__radd__}
_SCALINGS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__"}


class _MergeWatch(TorchFunctionMode):
    """Sees which slot outputs are added to another tensor while their holder runs.

    A slot's output is *marked*; the mark follows it through operations whose other inputs are
    only parameters or numbers (``gamma * drop_path(x)``, ``x[:, :c]``), and through scalings by
    constants (``drop_path(x) * scale.view(1, -1, 1, 1)``), while the call of the module that holds
    the slot is running. A constant is a parameter or buffer of the model, or a tensor computed from
    constants only (or from none). An addition of a marked tensor and another (non-parameter)
    tensor is a residual merge of that slot call. timm applies some drop paths off any residual
    (ByobNet blocks without a shortcut, whose whole output is dropped and returned); those calls
    are not branches.
    """

    def __init__(self, constants: list[Tensor]) -> None:
        super().__init__()
        self.marks: dict[int, tuple[Tensor, Any, Any]] = {}  # id(tensor) -> (tensor, call record, holder call token)
        self.active: set[int] = set()  # tokens of holder calls now running
        self.constants: dict[int, Tensor] = {id(t): t for t in constants}  # kept alive, so ids stay unique

    def _constant(self, t: Tensor) -> bool:
        return self.constants.get(id(t)) is t

    def mark(self, t: Tensor, record: Any, token: Any) -> None:
        self.marks[id(t)] = (t, record, token)

    def _mark_of(self, t: Tensor):
        entry = self.marks.get(id(t))
        if entry is not None and entry[0] is t and id(entry[2]) in self.active:
            return entry
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        for a in (*args, *kwargs.values()):
            if isinstance(a, (tuple, list)):
                flat.extend(x for x in a if isinstance(x, Tensor))
        marked = [(t, self._mark_of(t)) for t in flat]
        marked = [(t, m) for t, m in marked if m is not None]
        out = func(*args, **kwargs)
        if all(self._constant(t) for t in flat):
            for o in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(o, Tensor):
                    self.constants[id(o)] = o
        if not marked:
            return out
        others = [t for t in flat if all(t is not mt for mt, _ in marked) and not isinstance(t, nn.Parameter)]
        if getattr(func, "__name__", "") in _SCALINGS and all(self._constant(t) for t in others):
            others = []
        if func in _ADDS and others:
            for _, (_, record, _) in marked:
                record["merged"] = True
        elif not others and len({id(m[1]) for _, m in marked}) == 1:
            _, (_, record, token) = marked[0]
            for o in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(o, Tensor):
                    self.mark(o, record, token)
        return out


def native_slots(model: nn.Module, run: Callable[[nn.Module], Any]) -> list[Slot]:
    """Drop-path slots of a model built with drop path, with their rates and how forward uses them.

    Slots are the drop-path-like modules and every ``nn.Identity`` or ``None`` held under one of
    their attribute names (``drop_path``, ``drop_path1``, ``stochastic_depth``, ...). ``run(model)``
    runs one eval forward; ``None`` slots are set to an ``nn.Identity`` first (the model is a
    throwaway oracle). Returns the slots that forward calls, in call order; a call counts as a
    branch (``Slot.merged``) when its output is added to a residual while the slot's holder runs.
    Only the last forward of the model counts (building example inputs may try it on some first).
    """
    modules = dict(model.named_modules())
    names = {path.rpartition(".")[2] for path, m in modules.items() if path and is_droppath_like(m)}
    slots: dict[str, Slot] = {}
    for path, m in list(modules.items()):
        for attr in names:
            full = f"{path}.{attr}" if path else attr
            held = m._modules.get(attr) if attr in m._modules else m.__dict__.get(attr, _MISSING)
            if held is None:
                setattr(m, attr, nn.Identity())
                slots[full] = Slot(full, 0.0, "None")
            elif isinstance(held, nn.Module) and is_droppath_like(held):
                slots[full] = Slot(full, native_rate(held), type(held).__name__)
            elif isinstance(held, nn.Identity):
                slots[full] = Slot(full, 0.0, "Identity")
    modules = dict(model.named_modules())
    watch = _MergeWatch([*model.parameters(), *model.buffers()])
    counter = [0]
    records: list[tuple[Slot, dict]] = []
    tokens: dict[str, list] = {}  # holder path -> stack of tokens of its running calls
    handles = []
    for holder in {s.holder for s in slots.values()}:
        def enter(mod, args, holder=holder):
            token = object()
            tokens.setdefault(holder, []).append(token)
            watch.active.add(id(token))

        def leave(mod, args, out, holder=holder):
            token = tokens[holder].pop()
            watch.active.discard(id(token))

        handles.append(modules[holder].register_forward_pre_hook(enter))
        handles.append(modules[holder].register_forward_hook(leave))
    for path, slot in slots.items():

        def hook(mod, args, out, slot=slot):
            if slot.order < 0:
                slot.order = counter[0]
                counter[0] += 1
            record = {"merged": False}
            records.append((slot, record))
            stack = tokens.get(slot.holder)
            if isinstance(out, Tensor) and any(out is a for a in args):
                # an eval slot returns its input object: mark a copy, so that a merge of the input
                # itself (ResNeSt drops ``x`` after ``shortcut = x`` and adds ``shortcut``) is not
                # taken for a merge of the slot's output
                out = out.clone()
            if isinstance(out, Tensor) and stack:
                watch.mark(out, record, stack[-1])
            return out

        handles.append(modules[path].register_forward_hook(hook))

    def restart(mod, args):  # only the last forward counts: building example inputs may run the model first
        records.clear()
        counter[0] = 0
        for slot in slots.values():
            slot.order = -1

    handles.append(model.register_forward_pre_hook(restart))
    try:
        with watch:
            run(model)
    finally:
        for h in handles:
            h.remove()
    index: collections.Counter = collections.Counter()
    for slot, record in records:
        if record["merged"]:
            slot.merged.append(index[slot.path])
        else:
            slot.off_residual += 1
        index[slot.path] += 1
    return sorted((s for s in slots.values() if s.order >= 0), key=lambda s: s.order)


def off_residual_note(slots: list[Slot]) -> str:
    off = [s for s in slots if s.off_residual and not s.calls]
    if not off:
        return ""
    paths = listing([s.path for s in off], 3)
    return f"{len(off)} native slots are applied off any residual and not counted ({paths})"


def eval_forward(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    was = model.training
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(*args, **kwargs)
    model.train(was)
    return out


def _output_tensors(obj: Any) -> list[Tensor]:
    """The tensors of a model's output (nested mappings, HF ``ModelOutput``s, lists and tuples), in order."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _output_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _output_tensors(v)]
    return []


def _same(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def unused_sites(model: nn.Module, args: tuple, kwargs: dict) -> list[str] | None:
    """The attached DropPaths whose output the model does not use: each in turn adds noise as large as the
    stream to what it returns (eval mode), and some output tensor must change. A DropPath that acts after its
    branch was added (on a block's own output), or on a value nothing reads, is listed. Noise rather than a
    drop: a branch that computes almost nothing here (a zero-initialised last norm) would hide it. A stream the
    model reads only through a discrete choice (a quantizer, a patcher's boundaries) may not change either.
    None where noise on the float inputs changes no output either (a zero-initialised head at random weights):
    such a model cannot show it."""
    from droppath_surgery import DropPath

    unused = []
    with torch.random.fork_rng(devices=[]):  # the global RNG left as it was
        base = _output_tensors(eval_forward(model, args, kwargs))
        noisy = {k: v + torch.randn_like(v) if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in kwargs.items()}
        noisy_args = tuple(a + torch.randn_like(a) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
        floats = any(isinstance(v, Tensor) and v.is_floating_point() for v in (*args, *kwargs.values()))
        if floats and _same(base, _output_tensors(eval_forward(model, noisy_args, noisy))):
            return None
        for name, drop in [(n, m) for n, m in model.named_modules() if isinstance(m, DropPath)]:
            handle = drop.register_forward_hook(lambda m, a, out: out + torch.randn_like(out) * (1 + out.abs().mean()))
            try:
                out = _output_tensors(eval_forward(model, args, kwargs))
            finally:
                handle.remove()
            if _same(base, out):
                unused.append(name)
    return unused


def runner(args: tuple, kwargs: dict) -> Callable[[nn.Module], Any]:
    """One eval forward on ``args``/``kwargs`` (moved to the meta device for a meta model); with no
    inputs, the ones ``build_example_inputs`` builds for the model."""

    def run(model: nn.Module) -> None:
        if not args and not kwargs:
            a, k = build_example_inputs(model)
        else:
            meta = any(p.is_meta for p in model.parameters())
            move = (lambda t: t.to("meta") if meta and isinstance(t, Tensor) else t)
            a, k = tuple(move(t) for t in args), {n: move(t) for n, t in kwargs.items()}
        eval_forward(model, a, k)

    return run


def native_build(factory: Callable[[], nn.Module], args: tuple = (), kwargs: dict | None = None) -> list[Slot]:
    """The slots of the native build (with drop path): built and run on the meta device, or for
    real when the meta forward fails."""
    run = runner(args, kwargs or {})
    try:
        with torch.device("meta"):
            model = factory()
        return native_slots(model, run)
    except Exception:  # noqa: BLE001 - whatever fails on the meta device is retried for real
        return native_slots(factory(), run)


# ------------------------------------------------------------------------------------------------
# What the model under test should have
# ------------------------------------------------------------------------------------------------


@dataclass
class SlotBranch:
    """A slot that the model under test holds as a module (``Identity`` or a DropPath): the engine must
    carry the tensor it outputs, once per call in ``calls``."""

    path: str
    calls: list[int]
    rate: float


@dataclass
class Holder:
    """A module that holds branches matched by count: the engine sites under it that no slot claimed
    must be exactly ``free``. Those are its ``None`` slots and, for HF / torchvision, the branches of
    the architecture's block that the library does not drop; ``rates`` is the native rate of each."""

    path: str
    free: int = 0
    rates: list[float] = field(default_factory=list)  # one per count-matched branch, when known
    what: list[str] = field(default_factory=list)  # what the count-matched branches are, for reasons
    order: int = 1 << 30


@dataclass
class Expected:
    slots: list[SlotBranch] = field(default_factory=list)
    holders: dict[str, Holder] = field(default_factory=dict)
    native: list[Slot] = field(default_factory=list)  # the native slots with merged calls, in call order

    @property
    def count(self) -> int:
        return sum(len(s.calls) for s in self.slots) + sum(h.free for h in self.holders.values())

    def holder(self, path: str) -> Holder:
        return self.holders.setdefault(path, Holder(path))

    def innermost_holder(self, path: str) -> str | None:
        """The innermost holder whose module is a strict ancestor of ``path``."""
        best = None
        for h in self.holders:
            if inside(path, h) and (best is None or len(h) > len(best)):
                best = h
        return best


def expected_from_slots(slots: list[Slot], tested: nn.Module) -> Expected:
    """The branches the native build drops (slot calls merged into a residual). Each slot's holder is
    a holder; a slot the model under test holds as a module is matched by the tensor it carries, one
    held as ``None`` (or not at all) by count within its holder."""
    tested_modules = dict(tested.named_modules())
    exp = Expected()
    for s in slots:
        if not s.calls:
            continue
        exp.native.append(s)
        h = exp.holder(s.holder)
        h.order = min(h.order, s.order)
        if tested_modules.get(s.path) is not None:
            exp.slots.append(SlotBranch(s.path, list(s.merged), s.rate))
        else:
            h.free += s.calls
            h.rates += [s.rate] * s.calls
            holder = tested_modules.get(s.holder)
            held = _MISSING if holder is None else getattr(holder, s.path.rpartition(".")[2], _MISSING)
            here = "None" if held is None else "absent"
            h.what += [f"{s.path} ({here} here)"] * s.calls
    return exp


def add_architecture_blocks(expected: Expected, model: nn.Module, block_cls: str, per_block: int,
                            keep: Callable[[nn.Module], bool] = lambda m: True) -> int:
    """Make each module of class ``block_cls`` in ``model`` (for which ``keep`` holds) a holder of
    ``per_block`` residual branches, as the library's source defines its block. The branches its
    native slots drop are already expected; the rest are matched by count and take the rate of the
    block's native slots (none when the library has no drop path). Returns the number of blocks."""
    found = 0
    for path, m in model.named_modules():
        if type(m).__name__ != block_cls or not keep(m):
            continue
        found += 1
        within = [s for s in expected.native if inside(s.path, path)]
        more = max(0, per_block - sum(s.calls for s in within))
        h = expected.holder(path)
        h.order = min([h.order] + [s.order for s in within])
        if more:
            h.free += more
            h.what.append(f"{more} {block_cls} branch{'es' if more > 1 else ''} the library does not drop")
            if within:
                h.rates += [within[0].rate] * more
    return found


def observe_outputs(model: nn.Module, args: tuple, kwargs: dict, paths) -> dict[str, list]:
    """The outputs of each call of the modules at ``paths`` in one eval forward (kept alive, so
    tensor identity can be compared)."""
    modules = dict(model.named_modules())
    seen: dict[str, list] = {p: [] for p in paths if p in modules}
    handles = [modules[p].register_forward_hook(lambda m, a, o, p=p: seen[p].append(o)) for p in seen]
    try:
        eval_forward(model, args, kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen
