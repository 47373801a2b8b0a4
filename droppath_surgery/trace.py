"""Find residual branches by watching one forward pass.

The model runs once, in eval mode and without gradients, on example inputs while a
``TorchFunctionMode`` records every torch operation and forward hooks record every module call.
From that record we know, for each tensor, which tensors it was computed from and which module
calls returned it. An addition ``s + b`` (or ``b + s``, ``s += b``, ``torch.add``) is a residual
merge when ``s`` is an ancestor of ``b`` (the branch was computed from the stream it is added back
to), both have the same shape, and ``b`` was returned by at least one module call: those calls, from
the innermost to the outermost, are the branch's *end chain*. Nothing depends on class or attribute
names, so the same code finds the branches of timm, Hugging Face, torchvision and hand-written
models. In-place operations (``x += shortcut``, inplace activations) are decided at the moment of
the operation, using each tensor's version counter to tell mutation from identity.

A branch belongs to a *block*: the innermost module on the call stack whose parent is a container
(``Sequential``/``ModuleList``/``ModuleDict``); when the merge runs in a module that is no such
element (``for attn, mlp in self.layers: x = x + attn(x); x = x + mlp(x)``), the outermost container
element on the way to the branch end. A residual outside any container element (a stem, a pooling head such as SigLIP's
attention-pool MLP) is not in the block stack and is reported as ignored, as timm does.

The batch dimension of each branch is the dimension whose size equals the example batch size; if
that is ambiguous, a second, traced pass with the batch doubled decides it. For inputs the user
passed, whose layout we cannot know, a pass with only sample 0 changed checks that no other sample
of any branch changes; a sequence-first ``(L, N, D)`` input fails that check for dimension 0 (attention
spreads the change over the tokens) and passes it for dimension 1.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .errors import BatchDimError, ExampleInputsError

__all__ = ["BranchEnd", "Branch", "Trace", "trace_residual_branches", "CONTAINERS"]

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

_ADD_FUNCS = {torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__, torch.Tensor.__radd__, torch.add}


class _Node:
    """One value of one tensor in the traced pass (an in-place op makes a new value)."""

    __slots__ = ("serial", "parents", "live", "chain")

    def __init__(self, serial: int, parents: tuple, live: bool) -> None:
        self.serial = serial
        self.parents = parents  # only live parents are kept: nothing else can lead to the stream
        self.live = live  # computed from the example inputs
        self.chain: list = []  # (call, output_index) of every module call that returned this value


@dataclass(eq=False)
class _Call:
    module: nn.Module
    index: int  # this is the module's index-th call in the pass
    stack: tuple  # enclosing calls, outermost first (excluding this one)


@dataclass(frozen=True)
class BranchEnd:
    """A module call that returned the branch output, and where in its output the tensor was."""

    module: nn.Module
    path: str
    call: int
    output_index: tuple


@dataclass
class Branch:
    """One residual branch seen in the traced pass."""

    ends: list[BranchEnd]  # innermost module call first
    block: nn.Module
    block_path: str
    block_index: int = -1
    branch: int = 0  # position among the block's branches
    shape: tuple = ()
    batch_dim: int | None = None


@dataclass
class Trace:
    """Everything one observed forward pass tells about the model's residual branches."""

    branches: list[Branch]
    num_blocks: int
    calls: dict[int, int]  # id(module) -> number of calls in the pass
    outputs: Any  # the model's outputs on the example inputs (eval mode, no grad)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _tensors(obj: Any, prefix: tuple = (), depth: int = 0):
    """(tensor, index path) pairs inside nested tuples, lists and dicts (HF ModelOutput too)."""
    if isinstance(obj, Tensor):
        yield obj, prefix
    elif depth < 4 and isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from _tensors(item, prefix + (i,), depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for key, item in obj.items():
            yield from _tensors(item, prefix + (key,), depth + 1)


def _flat_args(args: tuple, kwargs: dict) -> list[Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (tuple, list)):
            out.extend(x for x in a if isinstance(x, Tensor))
    return out


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors carry no version counter
        return -1


class _Recorder(TorchFunctionMode):
    def __init__(self, paths: dict[int, str]) -> None:
        super().__init__()
        self.paths = paths
        self.nodes: dict[int, tuple[weakref.ref, _Node]] = {}
        self.serial = 0
        self.stack: list[_Call] = []
        self.call_counts: dict[int, int] = {}
        self.merges: list[tuple[_Node, Tensor, tuple]] = []  # (branch node, branch tensor, stack)

    # -- values -------------------------------------------------------------------------------
    def node_of(self, t: Tensor) -> _Node:
        entry = self.nodes.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return self.new_node(t, ())

    def new_node(self, t: Tensor, parents: tuple, live: bool = False) -> _Node:
        self.serial += 1
        node = _Node(self.serial, parents, live)
        self.nodes[id(t)] = (weakref.ref(t), node)
        return node

    def mark_inputs(self, tensors) -> None:
        for t in tensors:
            self.new_node(t, (), live=True)

    # -- module calls ---------------------------------------------------------------------------
    def pre_hook(self, module, args):
        n = self.call_counts.get(id(module), 0)
        self.call_counts[id(module)] = n + 1
        self.stack.append(_Call(module, n, tuple(self.stack)))

    def post_hook(self, module, args, output):
        call = self.stack.pop()
        for t, index in _tensors(output):
            node = self.node_of(t)
            if node.live:
                node.chain.append((call, index))

    # -- torch operations -----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _flat_args(args, kwargs)
        if not inputs:
            return func(*args, **kwargs)
        nodes = [self.node_of(t) for t in inputs]
        if func in _ADD_FUNCS and len(args) >= 2 and kwargs.get("alpha", 1) == 1:
            self._check_merge(args[0], args[1])
        versions = [_version(t) for t in inputs]
        out = func(*args, **kwargs)
        live_parents = tuple(n for n in nodes if n.live)
        live = bool(live_parents)
        mutated = set()
        for t, v in zip(inputs, versions):
            if _version(t) != v and id(t) not in mutated:
                mutated.add(id(t))
                self.new_node(t, live_parents, live)
        if isinstance(out, Tensor):
            outs = (out,)
        elif isinstance(out, (tuple, list)):
            outs = [o for o in out if isinstance(o, Tensor)]
        else:
            return out
        input_ids = {id(t) for t in inputs}
        for o in outs:
            if id(o) in input_ids:
                continue  # identity (e.g. contiguous(), eval dropout) or mutated above
            self.new_node(o, live_parents, live)
        return out

    def _check_merge(self, a: Any, b: Any) -> None:
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape or a is b:
            return
        na, nb = self.node_of(a), self.node_of(b)
        if not (na.live and nb.live):
            return
        for stream, branch, tensor in ((na, nb, b), (nb, na, a)):
            if branch.chain and _is_ancestor(stream, branch):
                self.merges.append((branch, tensor, tuple(self.stack)))
                return


def _is_ancestor(anc: _Node, node: _Node) -> bool:
    """True if ``anc`` is a strict ancestor of ``node`` (only nodes created after ``anc`` are searched)."""
    floor = anc.serial
    todo = [node]
    seen = {node.serial}
    while todo:
        for p in todo.pop().parents:
            if p is anc:
                return True
            if p.serial > floor and p.serial not in seen:
                seen.add(p.serial)
                todo.append(p)
    return False


def _double(obj: Any, batch_dim: int, batch: int) -> Any:
    if isinstance(obj, Tensor):
        if obj.ndim > 0 and -obj.ndim <= batch_dim < obj.ndim and obj.shape[batch_dim] == batch:
            return torch.cat([obj, obj], dim=batch_dim)
        return obj
    if isinstance(obj, tuple):
        return tuple(_double(o, batch_dim, batch) for o in obj)
    if isinstance(obj, list):
        return [_double(o, batch_dim, batch) for o in obj]
    if isinstance(obj, dict):
        return {k: _double(v, batch_dim, batch) for k, v in obj.items()}
    return obj


class _Probe:
    """One observed forward pass: module hooks on every module, plus the recorder mode."""

    def __init__(self, model: nn.Module, paths: dict[int, str]) -> None:
        self.model = model
        self.paths = paths

    def run(self, args: tuple, kwargs: dict) -> tuple[Any, _Recorder]:
        rec = _Recorder(self.paths)
        handles = []
        try:
            for module in self.model.modules():
                handles.append(module.register_forward_pre_hook(rec.pre_hook))
                handles.append(module.register_forward_hook(rec.post_hook))
            rec.mark_inputs(_flat_args(args, kwargs))
            with rec:
                out = self.model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return out, rec


def _parent_map(model: nn.Module) -> dict[int, nn.Module | None]:
    parents: dict[int, nn.Module | None] = {id(model): None}
    for module in model.modules():
        for child in module.children():
            parents.setdefault(id(child), module)
    return parents


def _find_block(stack: tuple, ends: list[BranchEnd], parents: dict, paths: dict) -> nn.Module | None:
    """The block that holds a merge, or None when the merge is outside the block stack."""
    candidate = None
    for call in reversed(stack):  # innermost enclosing module first
        parent = parents.get(id(call.module))
        if isinstance(parent, CONTAINERS) and not isinstance(call.module, CONTAINERS):
            candidate = call.module
            break
    if candidate is None and stack:
        # The merge runs in a module that is not a block itself (``for f in self.layers: x = x + f(x)``):
        # the block is the outermost container element, below that module, on the way to the branch end.
        top = paths.get(id(stack[-1].module), "")
        end_path = ends[-1].path
        if not top or end_path.startswith(top + "."):
            module = stack[-1].module
            for part in (end_path[len(top) + 1 :] if top else end_path).split("."):
                child = module._modules.get(part)
                if child is None:
                    break
                if isinstance(module, CONTAINERS):
                    candidate = child
                    break
                module = child
    return candidate


def _branches_of(rec: _Recorder, model: nn.Module, paths: dict, parents: dict, ignored: list) -> list[Branch]:
    branches = []
    for node, tensor, stack in rec.merges:
        ends = [
            BranchEnd(call.module, paths.get(id(call.module), "<unregistered>"), call.index, index)
            for call, index in node.chain
            if id(call.module) in paths
        ]
        if not ends:
            continue
        block = _find_block(stack, ends, parents, paths)
        if block is None:
            ignored.append((ends[-1].path, "outside the repeated block stack (stem, head or pooling)"))
            continue
        branches.append(Branch(ends=ends, block=block, block_path=paths.get(id(block), ""), shape=tuple(tensor.shape)))
    return branches


def trace_residual_branches(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    batch_dim: int | None = None,
    inputs_batch_first: bool = False,
) -> Trace:
    """Run one observed forward pass and return the residual branches it contains.

    ``inputs_batch_first`` says the inputs' batch dimension is known to be 0 (inputs built by
    ``droppath_surgery.inputs``); otherwise it is checked. The caller is responsible for eval mode,
    ``torch.no_grad()`` and RNG isolation.
    """
    paths = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
    for name, m in model.named_modules():  # the first path of a shared module wins
        paths[id(m)] = name
    parents = _parent_map(model)
    probe = _Probe(model, paths)
    try:
        outputs, rec = probe.run(args, kwargs)
    except Exception as exc:
        raise ExampleInputsError(
            f"the model failed to run on the example inputs ({type(exc).__name__}: {exc}); pass "
            f"example_inputs= that the model accepts: a tensor, a tuple of positional arguments, or a "
            f"dict of keyword arguments."
        ) from exc
    ignored: list[tuple[str, str]] = []
    branches = _branches_of(rec, model, paths, parents, ignored)

    # Blocks in execution order; branches numbered within each block.
    order: dict[int, int] = {}
    per_block: dict[int, int] = {}
    for br in branches:
        key = id(br.block)
        if key not in order:
            order[key] = len(order)
        br.block_index = order[key]
        br.branch = per_block.get(key, 0)
        per_block[key] = br.branch + 1

    _assign_batch_dims(branches, probe, args, kwargs, batch_dim, rec, inputs_batch_first)
    return Trace(branches=branches, num_blocks=len(order), calls=dict(rec.call_counts), outputs=outputs, ignored=ignored)


def _merge_key(chain) -> tuple:
    return tuple((id(call.module), call.index) for call, _ in chain)


def _merge_tensors(rec: _Recorder) -> dict[tuple, Tensor]:
    return {_merge_key(node.chain): tensor for node, tensor, _ in rec.merges}


def _branch_key(br: Branch) -> tuple:
    return tuple((id(e.module), e.call) for e in br.ends)


def _perturb_first_sample(obj: Any, dim: int, batch: int, gen: torch.Generator) -> Any:
    """A copy of the inputs in which sample 0 (index 0 along ``dim``) differs and the rest are equal."""
    if isinstance(obj, Tensor):
        if obj.ndim == 0 or not -obj.ndim <= dim < obj.ndim or obj.shape[dim] != batch:
            return obj
        out = obj.clone()
        first = out.select(dim, 0)
        if out.is_floating_point():
            noise = torch.randn(first.shape, generator=gen, dtype=torch.float32).to(first.device, first.dtype)
            first.add_(noise)
        elif first.numel() > 1:
            first.copy_(first.flatten().roll(1).view_as(first))
        return out
    if isinstance(obj, tuple):
        return tuple(_perturb_first_sample(o, dim, batch, gen) for o in obj)
    if isinstance(obj, list):
        return [_perturb_first_sample(o, dim, batch, gen) for o in obj]
    if isinstance(obj, dict):
        return {k: _perturb_first_sample(v, dim, batch, gen) for k, v in obj.items()}
    return obj


def _sample_dims(branches, probe: _Probe, args, kwargs, input_dim: int, batch: int) -> dict[int, int] | None:
    """Batch dimension of each branch, given the inputs' batch dimension; None when undecidable."""
    dims: dict[int, int] = {}
    unresolved = []
    for i, br in enumerate(branches):
        matches = [d for d, n in enumerate(br.shape) if n == batch]
        if len(matches) == 1:
            dims[i] = matches[0]
        else:
            unresolved.append(i)
    if unresolved:
        # Ambiguous sizes: trace again with the batch doubled and see which dimension doubles.
        _, rec2 = probe.run(_double(args, input_dim, batch), _double(kwargs, input_dim, batch))
        doubled = _merge_tensors(rec2)
        for i in unresolved:
            shape = branches[i].shape
            other = doubled.get(_branch_key(branches[i]))
            if other is None or other.ndim != len(shape):
                return None
            grown = [d for d, (a, b) in enumerate(zip(shape, other.shape)) if b == 2 * a and a > 0]
            same = [d for d in grown if all(x == y for j, (x, y) in enumerate(zip(shape, other.shape)) if j != d)]
            if len(same) != 1:
                return None
            dims[i] = same[0]
    return dims


def _samples_independent(branches, dims, probe: _Probe, args, kwargs, input_dim: int, batch: int, reference) -> bool:
    """True if changing sample 0 of the inputs changes no other sample of any branch.

    That is what makes a dimension the batch: with a sequence-first input read as batch-first,
    attention would carry the change to every "sample" (which are really tokens).
    """
    gen = torch.Generator().manual_seed(1)
    _, rec = probe.run(_perturb_first_sample(args, input_dim, batch, gen), _perturb_first_sample(kwargs, input_dim, batch, gen))
    perturbed = _merge_tensors(rec)
    for i, br in enumerate(branches):
        before, after = reference.get(_branch_key(br)), perturbed.get(_branch_key(br))
        if before is None or after is None or before.shape != after.shape:
            continue
        d = dims[i]
        if before.device.type == "meta":
            return True  # no values on the meta device: nothing to check
        if before.shape[d] > 1 and not torch.equal(before.narrow(d, 1, before.shape[d] - 1), after.narrow(d, 1, after.shape[d] - 1)):
            return False
    return True


def _assign_batch_dims(branches, probe: _Probe, args, kwargs, batch_dim, rec, inputs_batch_first: bool) -> None:
    """Set ``batch_dim`` on every branch.

    With ``batch_dim`` given, it is used everywhere. Otherwise the inputs' batch dimension is 0 for
    inputs built here, and 0 or 1 for user inputs, decided by an independence check (sequence-first
    ``(L, N, D)`` inputs then resolve to 1). Each branch's own batch dimension is the one whose size
    is the batch size, or, if that is ambiguous, the one that doubles with the batch.
    """
    if not branches:
        return
    if batch_dim is not None:
        for br in branches:
            if not -len(br.shape) <= batch_dim < len(br.shape):
                raise BatchDimError(
                    f"batch_dim={batch_dim} is out of range for the branch ending at {br.ends[-1].path} "
                    f"with shape {br.shape}; pass the dimension that indexes samples."
                )
            br.batch_dim = batch_dim % len(br.shape)
        return
    tensors = [t for t in _flat_args(args, kwargs) if t.ndim > 0]
    if not tensors:
        raise BatchDimError(
            "the example inputs hold no tensor with a batch dimension, so the batch dimension of the "
            "residual branches cannot be found; pass batch_dim=."
        )
    reference = _merge_tensors(rec)
    candidates = [0] if inputs_batch_first else [d for d in (0, 1) if d < tensors[0].ndim]
    for input_dim in candidates:
        batch = tensors[0].shape[input_dim]
        dims = _sample_dims(branches, probe, args, kwargs, input_dim, batch)
        if dims is None:
            continue
        if batch > 1 and not inputs_batch_first:
            if not _samples_independent(branches, dims, probe, args, kwargs, input_dim, batch, reference):
                continue
        for i, br in enumerate(branches):
            br.batch_dim = dims[i]
        return
    raise BatchDimError(
        f"cannot tell which dimension of the residual stream indexes samples (tried input dimensions "
        f"{candidates}; example input shape {tuple(tensors[0].shape)}); pass batch_dim= (0 for (N, ...) "
        f"layouts, 1 for sequence-first (L, N, D)), and use an example batch of at least 2 samples."
    )
