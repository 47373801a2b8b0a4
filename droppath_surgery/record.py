"""Watch one forward pass: where each tensor came from, which module calls returned it, and every
residual merge, decided at the moment it happens.

The model runs (the caller sets eval mode, ``torch.no_grad()`` and RNG isolation) while a
``TorchFunctionMode`` records every torch operation and forward hooks on every module record every
module call. Each tensor value gets a node: the values it was computed from, whether it is live
(computed from the example inputs), the module calls that returned it (its *end chain*, innermost
first), and what the operation that made it was like (linear or not, mixing channels/tokens or not).

An addition ``a + b`` (also ``torch.add``, ``+=``) of two tensors of the same shape is a residual
merge when

* one operand (the stream) is an ancestor of the other, live, operand (the branch): ``x + f(x)``; the
  stream may be a parameter, as CaiT's class token; or
* both are live and were computed from an input of the module call that runs the addition, one by a
  strictly shorter path (the shortcut: ``downsample(x)`` in a ResNet block, or ``x + attn(x)`` in a
  parallel block) and one by a longer path (the branch); paths through another input of the call do
  not count (CoaT's ``f(x4) + g(x3)``, with ``x4`` made from ``x3`` before the call, is no merge);

and the branch is the output of a module call, possibly followed by per-sample-neutral scalings
(``out * self.alpha``, ``gamma * out``: multiplications by parameters or numbers, which commute with
a per-sample mask) and layout operations on it alone (``view``, ``reshape``, ``permute``,
``transpose``, ``flatten``, slicing: NextViT's ``x + out.transpose(-1, -2).reshape(B, C, H, W)``,
RexNet's ``x[:, :c] + shortcut``). Layout operations are recorded (``LayoutOp``) so that ``trace.py``
can replay them on sample indices: the branch counts only if one dimension of the module output maps
exactly onto the batch dimension of the tensor added (not tokens, not windows of several samples),
and only if the module runs inside the call that adds (a slice of the stream, TNT's
``patch_embed[:, 1:]``, leads back to the previous block, which is no branch). The branch must also compute something: at least one non-linear operation and
one that mixes channels or tokens. A branch of only linear operations (a positional convolution
``x + dwconv(x)``, a re-parameterizable conv/batch-norm mixer) or only per-channel ones (a
depthwise conv with an activation, as in DaViT's positional encoding) re-parameterizes the skip and
is not a block branch, unless it ends in a drop path slot: ``trace.py`` decides, with the merge's
``computes`` flag.

A merge whose stream was computed inside the call running the addition is flagged
(``Merge.inner_stream``): ``trace.py`` ignores it when that call is a part of the block rather than
the block itself (SwiftFormer's attention returns ``proj(attn * key) + query``).

In-place operations (``x += shortcut``, inplace activations) are seen through each tensor's version
counter: an operation that returns one of its inputs with an unchanged version is an identity
(``contiguous()``, eval-mode dropout); with a changed version it made a new value.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["Recorder", "Merge", "Call", "Node", "LayoutOp", "tensors_in", "flat_args", "arg_locations"]

_ADD = {torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__, torch.Tensor.__radd__, torch.add}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_SCALE = _MUL | {"div", "div_", "__truediv__", "__itruediv__", "true_divide"}
# Operations that are linear in their live inputs (with a single live input where it says so).
_LINEAR_ANY = {
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__",
    "cat", "concat", "concatenate", "stack", "view", "reshape", "permute", "transpose", "flatten", "unflatten",
    "contiguous", "squeeze", "unsqueeze", "expand", "expand_as", "clone", "to", "type_as", "float", "half",
    "bfloat16", "__getitem__", "narrow", "select", "chunk", "split", "unbind", "roll", "pad", "neg",
    "dropout", "identity", "flip", "repeat", "sum", "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "pixel_shuffle", "pixel_unshuffle",
    "view_as", "reshape_as", "movedim", "swapaxes", "t", "mT", "__get__",  # tensor properties: .T, .mT, .data
    "batch_norm",  # eval batch norm is affine
}
# Operations that only move, select or re-view the elements of their one live input (``self``): a
# branch may pass through them after the module that returned it (NextViT's
# ``x + out.transpose(-1, -2).reshape(B, C, H, W)``, RexNet's ``x[:, :c] + shortcut``).
_LAYOUT = {
    "view", "reshape", "permute", "transpose", "flatten", "unflatten", "contiguous", "squeeze", "unsqueeze",
    "__getitem__", "narrow", "movedim", "swapaxes", "view_as", "reshape_as", "t",
}
_CONV = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_MATMUL = {"linear", "matmul", "mm", "bmm", "einsum", "__matmul__", "addmm", "baddbmm", "scaled_dot_product_attention"}
_LINEAR_ONE = (_CONV | _MATMUL | _SCALE) - {"scaled_dot_product_attention"}


# Operations known not to mix channels (elementwise, activations, normalizations, pooling, layout).
# Anything not known is assumed to mix (fused attention kernels, custom ops): that errs towards
# finding a branch rather than missing one.
_PER_CHANNEL = _LINEAR_ANY | _SCALE | {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish",
    "hardswish_", "hardsigmoid", "leaky_relu", "leaky_relu_", "elu", "mish", "softplus", "hardtanh", "prelu",
    "layer_norm", "group_norm", "rms_norm", "instance_norm", "normalize", "max_pool1d", "max_pool2d",
    "max_pool3d", "adaptive_max_pool2d", "interpolate", "upsample", "exp", "log", "sqrt", "rsqrt", "pow", "__pow__",
    "abs", "clamp", "clamp_", "where", "erf", "sin", "cos", "masked_fill", "__setitem__", "zeros_like",
    "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full", "size", "dim",
    "type", "detach", "requires_grad_", "square", "reciprocal", "sign", "floor", "ceil", "round", "amax",
    "amin", "max", "min", "var", "std", "var_mean", "std_mean", "softmax", "log_softmax",
}


def _mixes(name: str, args: tuple, kwargs: dict) -> bool:
    """Does this operation mix channels? (A depthwise convolution, an activation or a norm does not.)"""
    if name in _MATMUL:
        return True
    if name in _CONV:
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        return isinstance(weight, Tensor) and weight.ndim > 1 and weight.shape[1] > 1
    return name not in _PER_CHANNEL


class Node:
    """One value of one tensor in the recorded pass (an in-place operation makes a new value)."""

    __slots__ = ("serial", "parents", "live", "chain", "linear", "mixing", "scaled_from", "op", "layout_from")

    def __init__(
        self, serial: int, parents: tuple, live: bool, linear=True, mixing=False, scaled_from=None, op="", layout_from=None
    ) -> None:
        self.serial = serial
        self.op = op  # name of the operation that made it ("" for inputs, parameters, constants)
        self.parents = parents  # the values it was computed from
        self.live = live  # computed from the example inputs
        self.chain: list = []  # (Call, output index) of every module call that returned this value
        self.linear = linear  # made by an operation that is linear in its live inputs
        self.mixing = mixing  # made by an operation that mixes channels or tokens (not depthwise)
        self.scaled_from = scaled_from  # the live node this is a per-sample-neutral scaling of
        self.layout_from = layout_from  # (live node, LayoutOp) when a layout operation made it from that node


@dataclass(eq=False)
class Call:
    """One call of one module."""

    module: nn.Module
    index: int  # this is the module's index-th call in the pass
    order: int  # position among all module calls of the pass
    stack: tuple  # enclosing calls, outermost first
    inputs: tuple = ()  # live nodes of the call's tensor arguments
    args: tuple = ()  # (location, node, shape) of each tensor argument; see ``arg_locations``
    first: int = 0  # serials of the values made during the call are in (first, last]
    last: int = 1 << 62


_SELF = object()  # stands for the live input in a recorded layout operation's arguments


@dataclass(frozen=True)
class LayoutOp:
    """A layout operation on the way from a branch's module output to the merge, replayable on any
    tensor of the input's shape (``trace.py`` replays it on sample indices to map the batch dim)."""

    func: Any
    args: tuple  # with ``_SELF`` for the live input
    kwargs: dict
    in_shape: tuple

    def __call__(self, t: Tensor) -> Any:
        args = tuple(t if a is _SELF else a for a in self.args)
        return self.func(*args, **self.kwargs)


@dataclass
class Merge:
    """A residual merge seen in the pass."""

    end: Node  # the branch value returned by module calls (``end.chain``)
    tensor: Tensor  # the branch tensor as added (same shape as the stream)
    stack: tuple  # module calls enclosing the addition, outermost first
    kind: str  # "residual" (stream is an ancestor) or "fork" (both from a common input)
    computes: bool  # the branch has a non-linear operation and one that mixes channels
    start: Node | None = None  # the stream (residual) or the common input (fork) the branch starts from
    serial: int = 0  # serial of the last value made before the addition
    layout: tuple = ()  # layout operations from the module output (``end``) to ``tensor``, in order
    inner_stream: bool = False  # the stream was computed inside the call running the addition


def tensors_in(obj: Any, prefix: tuple = (), depth: int = 0):
    """(tensor, index path) pairs inside nested tuples, lists and dicts (HF ModelOutput too)."""
    if isinstance(obj, Tensor):
        yield obj, prefix
    elif depth < 4 and isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from tensors_in(item, prefix + (i,), depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for key, item in obj.items():
            yield from tensors_in(item, prefix + (key,), depth + 1)


def arg_locations(args: tuple, kwargs: dict):
    """(location, tensor) for each tensor argument: ``(i,)`` or ``(name,)`` for an argument,
    ``(i, j)`` / ``(name, j)`` for an element of a tuple or list argument (the tensors ``flat_args``
    returns, in the same order)."""
    for key, a in (*enumerate(args), *kwargs.items()):
        if isinstance(a, Tensor):
            yield (key,), a
        elif isinstance(a, (tuple, list)):
            for j, x in enumerate(a):
                if isinstance(x, Tensor):
                    yield (key, j), x


def flat_args(args: tuple, kwargs: dict) -> list[Tensor]:
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


def _search_back(node: Node, target: Node, barrier: frozenset = frozenset()) -> tuple[int | None, list[Node]]:
    """Breadth-first search from ``node`` towards ``target`` through live parents made after it,
    not through the nodes whose serials are in ``barrier``.

    Returns the length of the shortest path (None if ``target`` is no ancestor) and every node
    visited: the values computed after ``target`` that ``node`` depends on.
    """
    floor = target.serial
    seen = {node.serial}
    frontier = [node]
    visited = [node]
    depth = 0
    found = None
    while frontier:
        depth += 1
        nxt = []
        for n in frontier:
            for p in n.parents:
                if p is target:
                    found = depth if found is None else found
                elif p.serial > floor and p.serial not in seen and p.serial not in barrier:
                    seen.add(p.serial)
                    nxt.append(p)
                    visited.append(p)
        frontier = nxt
    return found, visited


def _branch_end(node: Node) -> tuple[Node | None, tuple]:
    """The value a module returned that this branch value is, up to per-sample-neutral scalings and
    layout operations; and those layout operations, in the order they ran."""
    layout = []
    while not node.chain:
        if node.scaled_from is not None:
            node = node.scaled_from
        elif node.layout_from is not None:
            node, op = node.layout_from
            layout.append(op)
        else:
            return None, ()
    return node, tuple(reversed(layout))


class Recorder(TorchFunctionMode):
    """Records one forward pass. Use ``watch(model)`` for the hooks, then run the model inside ``with``."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, tuple[weakref.ref, Node]] = {}
        self.serial = 0
        self.stack: list[Call] = []
        self.calls: list[Call] = []
        self.call_counts: dict[int, int] = {}
        self.merges: list[Merge] = []
        self.all_nodes: list[Node] = []  # every value, in serial order

    # -- values -------------------------------------------------------------------------------
    def node_of(self, t: Tensor) -> Node:
        entry = self.nodes.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return self.new_node(t, (), live=False)

    def new_node(
        self, t: Tensor, parents: tuple, live: bool, linear=True, mixing=False, scaled_from=None, op="", layout_from=None
    ) -> Node:
        self.serial += 1
        node = Node(self.serial, parents, live, linear, mixing, scaled_from, op, layout_from)
        self.nodes[id(t)] = (weakref.ref(t), node)
        self.all_nodes.append(node)
        return node

    def mark_inputs(self, tensors) -> None:
        for t in tensors:
            self.new_node(t, (), live=True)

    # -- module calls ---------------------------------------------------------------------------
    def watch(self, model: nn.Module) -> list:
        handles = []
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(self._post_hook))
        return handles

    def _pre_hook(self, module, args, kwargs):
        n = self.call_counts.get(id(module), 0)
        self.call_counts[id(module)] = n + 1
        located = tuple((loc, self.node_of(t), tuple(t.shape)) for loc, t in arg_locations(args, kwargs))
        inputs = tuple(node for _, node, _ in located if node.live)
        call = Call(module, n, len(self.calls), tuple(self.stack), inputs, located, first=self.serial)
        self.calls.append(call)
        self.stack.append(call)

    def _post_hook(self, module, args, output):
        call = self.stack.pop()
        call.last = self.serial
        for t, index in tensors_in(output):
            node = self.node_of(t)
            if node.live:
                node.chain.append((call, index))

    # -- torch operations -----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = flat_args(args, kwargs)
        if not inputs:
            return func(*args, **kwargs)
        nodes = [self.node_of(t) for t in inputs]
        if func in _ADD and len(args) >= 2 and kwargs.get("alpha", 1) == 1:
            self._check_merge(args[0], args[1])
        versions = [_version(t) for t in inputs]
        out = func(*args, **kwargs)
        live_parents = tuple(n for n in nodes if n.live)
        name = getattr(func, "__name__", "")
        linear = not live_parents or name in _LINEAR_ANY or (name in _LINEAR_ONE and len(live_parents) == 1)
        mixing = bool(live_parents) and _mixes(name, args, kwargs)
        scaled_from = None
        if name in _SCALE and len(live_parents) == 1 and isinstance(out, Tensor):
            live_input = inputs[nodes.index(live_parents[0])]
            divides_by_live = name not in _MUL and args[0] is not live_input
            if live_input.shape == out.shape and not divides_by_live:
                scaled_from = live_parents[0]  # x * c, c * x or x / c: commutes with a per-sample mask
        layout_from = None
        if (
            name in _LAYOUT
            and len(live_parents) == 1
            and isinstance(out, Tensor)
            and args
            and isinstance(args[0], Tensor)
            and nodes[0] is live_parents[0]
            and not any(isinstance(a, Tensor) for a in (*args[1:], *kwargs.values()))
        ):
            op = LayoutOp(func, (_SELF, *args[1:]), dict(kwargs), tuple(args[0].shape))
            layout_from = (live_parents[0], op)
        parents = tuple(nodes)
        live = bool(live_parents)
        mutated = set()
        for t, v in zip(inputs, versions):
            if _version(t) != v and id(t) not in mutated:
                mutated.add(id(t))
                self.new_node(t, parents, live, linear, mixing, scaled_from, name)
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
            single = len(outs) == 1
            self.new_node(
                o, parents, live, linear, mixing, scaled_from if single else None, name, layout_from if single else None
            )
        return out

    def _check_merge(self, a: Any, b: Any) -> None:
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape or a is b:
            return
        na, nb = self.node_of(a), self.node_of(b)
        if not (na.live or nb.live):
            return
        stack = tuple(self.stack)
        # x + f(x): the stream is an ancestor of the branch.
        for stream, branch, tensor in ((na, nb, b), (nb, na, a)):
            if not branch.live:
                continue
            depth, visited = _search_back(branch, stream)
            if depth is not None:
                inner = bool(stack) and stream.live and stream.serial > stack[-1].first
                self._add_merge(branch, tensor, stack, "residual", visited, stream, inner)
                return
        # shortcut(x) + f(x): both computed from an input of the call running the addition.
        if not stack:
            return
        if not (na.live and nb.live):
            return
        for fork in stack[-1].inputs:
            # Each operand must come from the fork input itself, not through another input of the
            # call (CoaT: cur4, from x4 and through it from x3, is no branch of x3).
            barrier = frozenset(n.serial for n in stack[-1].inputs if n is not fork)
            da, va = _search_back(na, fork, barrier)
            db, vb = _search_back(nb, fork, barrier)
            if da is None or db is None or da == db:
                continue
            (tensor, node, visited) = (a, na, va) if da > db else (b, nb, vb)
            self._add_merge(node, tensor, stack, "fork", visited, fork)
            return

    def _add_merge(
        self,
        branch: Node,
        tensor: Tensor,
        stack: tuple,
        kind: str,
        visited: list[Node],
        start: Node,
        inner_stream: bool = False,
    ) -> None:
        end, layout = _branch_end(branch)
        if end is None:
            return
        if layout and not (stack and any(stack[-1] in call.stack for call, _ in end.chain)):
            # Through layout operations only to a module run by the call that adds: a slice of the
            # stream (TNT's ``patch_embed[:, 1:] + proj(...)``) leads back to the previous block.
            return
        computes = any(not n.linear for n in visited) and any(n.mixing for n in visited)
        self.merges.append(Merge(end, tensor, stack, kind, computes, start, self.serial, layout, inner_stream))
