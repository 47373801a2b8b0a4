"""Record one forward pass: where each tensor value came from, which module calls returned it, and
every addition of two tensors of one shape. Nothing is analysed here (``merges`` and the passes
after it read the recording).

The model runs (the caller sets eval mode and ``torch.no_grad()``) while a ``TorchFunctionMode`` sees
every torch operation and forward hooks on every module see every call. Each tensor value gets a
``Node``: the values it was computed from, whether it is live (computed from the example inputs), the
module calls that returned it (its *end chain*, innermost first) and what made it (linear or not,
mixing channels or not, a per-sample-neutral scaling or float cast of one live value, or a replayable layout
operation). In-place operations are seen through the version counter: an operation that returns one
of its inputs unchanged is an identity; one that bumped an input's version made a new value of it.
An ``Addition`` is kept with the nodes its operands had at that moment (``x += f(x)`` included).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .. import nested
from ..sketch import Projections, fingerprint, sketch

__all__ = ["Node", "Call", "LayoutOp", "Addition", "Recording", "record", "version_counter", "SELF"]

_ADD = {torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__, torch.Tensor.__radd__, torch.add}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_SCALE = _MUL | {"div", "div_", "__truediv__", "__itruediv__", "true_divide"}
_CAST = {"float", "half", "bfloat16", "double", "to", "type_as"}  # with a floating input and output
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
# Operations that only move, select or re-view the elements of their one live input (``self``).
_LAYOUT = {
    "view", "reshape", "permute", "transpose", "flatten", "unflatten", "contiguous", "squeeze", "unsqueeze",
    "__getitem__", "narrow", "movedim", "swapaxes", "view_as", "reshape_as", "t",
}
_CONV = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_MATMUL = {"linear", "matmul", "mm", "bmm", "einsum", "__matmul__", "addmm", "baddbmm", "scaled_dot_product_attention"}
_LINEAR_ONE = (_CONV | _MATMUL | _SCALE) - {"scaled_dot_product_attention"}
# Operations known not to mix channels (elementwise, activations, per-channel normalizations, pooling,
# layout). Anything not known is assumed to mix (fused attention kernels, custom ops): that errs
# towards finding a branch rather than missing one. Layer, RMS and group norms are not here: their
# statistics span the channels, so each output channel depends on the others (PoolFormer's token
# mixer ``pool(norm(x)) - norm(x)`` computes through its norm); a group norm with one channel per
# group is an instance norm, per channel.
_PER_CHANNEL = _LINEAR_ANY | _SCALE | {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish",
    "hardswish_", "hardsigmoid", "leaky_relu", "leaky_relu_", "elu", "mish", "softplus", "hardtanh", "prelu",
    "instance_norm", "normalize", "max_pool1d", "max_pool2d",
    "max_pool3d", "adaptive_max_pool2d", "interpolate", "upsample", "exp", "log", "sqrt", "rsqrt", "pow", "__pow__",
    "abs", "clamp", "clamp_", "where", "erf", "sin", "cos", "masked_fill", "__setitem__", "zeros_like",
    "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full", "size", "dim",
    "type", "detach", "requires_grad_", "square", "reciprocal", "sign", "floor", "ceil", "round", "amax",
    "amin", "max", "min", "var", "std", "var_mean", "std_mean", "softmax", "log_softmax",
}

MAX_INT_VALUES = 1 << 14  # longest integer vector argument whose values a module call keeps
SELF = object()  # stands for the live input in a recorded layout operation's arguments


def _mixes(name: str, args: tuple, kwargs: dict) -> bool:
    """Does this operation mix channels? (A depthwise convolution, an activation or a per-channel norm
    does not; a layer, RMS or group norm does, through its statistics.)"""
    if name in _MATMUL:
        return True
    if name in _CONV:
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        return isinstance(weight, Tensor) and weight.ndim > 1 and weight.shape[1] > 1
    if name == "group_norm":
        x = args[0] if args else kwargs.get("input")
        groups = args[1] if len(args) > 1 else kwargs.get("num_groups")
        return not (isinstance(x, Tensor) and x.ndim > 1 and groups == x.shape[1])
    return name not in _PER_CHANNEL


class Node:
    """One value of one tensor in the recorded pass (an in-place operation makes a new value).

    ``chain`` grows while the pass runs (each module call that returns the value appends itself);
    everything else is set at creation.
    """

    __slots__ = (
        "serial", "parents", "live", "chain", "linear", "mixing", "scaled_from", "op", "layout_from", "call", "gated",
    )

    def __init__(
        self,
        serial: int,
        parents: tuple,
        live: bool,
        linear: bool = True,
        mixing: bool = False,
        scaled_from: Node | None = None,
        op: str = "",
        layout_from: tuple | None = None,
        call: int = 0,
        gated: tuple = (),
    ) -> None:
        self.serial = serial
        self.op = op  # name of the operation that made it ("" for inputs, parameters, constants)
        self.parents = parents  # the values it was computed from
        self.live = live  # computed from the example inputs
        self.chain: tuple[tuple[Call, tuple], ...] = ()  # (Call, output index) of every module call that returned it
        self.linear = linear  # made by an operation that is linear in its live inputs
        self.mixing = mixing  # made by an operation that mixes channels or tokens (not depthwise)
        self.scaled_from = scaled_from  # the live node this is a per-sample-neutral scaling of
        self.layout_from = layout_from  # (live node, LayoutOp) when a layout operation made it from that node
        self.call = call  # the torch operation call that made it (outputs of one ``split`` share it); 0 for inputs
        # ``a * g`` (or ``a / g``) of two live values of which ``a`` has the output's shape: ``(a, g, None)``. It
        # commutes with a per-sample mask on ``a`` unless ``g`` is computed from it (``merges`` checks that). A
        # product of two factors that both broadcast to it (a hyper-connection's ``post.unsqueeze(-1) *
        # f.unsqueeze(-2)``): ``(a, g, expand)`` for each factor, ``expand`` the layout operation that broadcasts
        # ``a`` to the product's shape (the batch dimension pass replays it).
        self.gated = gated


@dataclass(eq=False, slots=True)
class Call:
    """One call of one module. ``last`` is set when the call returns."""

    module: nn.Module
    index: int  # this is the module's index-th call in the pass
    order: int  # position among all module calls of the pass
    stack: tuple  # enclosing calls, outermost first
    inputs: tuple = ()  # live nodes of the call's tensor arguments
    args: tuple = ()  # (location in (args, kwargs), node, shape) of each tensor argument
    int_values: tuple = ()  # (location, CPU copy) of each small 1-D integer tensor argument (sample boundaries)
    first: int = 0  # serials of the values made during the call are in (first, last]
    last: int = 1 << 62


@dataclass(frozen=True)
class LayoutOp:
    """A layout operation on a live value, replayable on any tensor of the input's shape (the batch
    dimension pass replays it on sample indices)."""

    func: Any
    args: tuple  # with ``SELF`` for the live input
    kwargs: Mapping[str, Any]
    in_shape: tuple

    def __call__(self, t: Tensor) -> Any:
        args = tuple(t if a is SELF else a for a in self.args)
        return self.func(*args, **self.kwargs)


@dataclass(frozen=True)
class Addition:
    """``a + b`` of two tensors of one shape, at least one live, as the operands were at that moment."""

    a: Node
    b: Node
    shape: tuple
    stack: tuple  # module calls enclosing the addition, outermost first
    serial: int  # serial of the last value made before the addition
    sketches: tuple = ()  # per operand (dtype, {dim: sketch of one sample}) for dims of a sketched size (``record``)


@dataclass(frozen=True)
class Recording:
    """One recorded forward pass."""

    nodes: tuple[Node, ...]  # every value, in serial order
    calls: tuple[Call, ...]  # every module call, in call order
    additions: tuple[Addition, ...]
    call_counts: Mapping[int, int]  # id(module) -> calls in the pass
    outputs: Any = field(repr=False)  # what the model returned, each tensor as its ``sketch.Fingerprint``
    last_serial: int = 0


def version_counter(t: Tensor) -> int:
    """A tensor's version counter (bumped by every in-place write); -1 for inference tensors."""
    try:
        return t._version
    except RuntimeError:  # inference tensors carry no version counter
        return -1


class _Recorder(TorchFunctionMode):
    def __init__(self, sketch_sizes: frozenset[int], sketch_sample: int) -> None:
        super().__init__()
        self.sketch_sizes = sketch_sizes
        self.sketch_sample = sketch_sample
        self.projections: Projections = {}
        self.nodes: dict[int, tuple[weakref.ref, Node]] = {}
        self.serial = 0
        self.stack: list[Call] = []
        self.calls: list[Call] = []
        self.call_counts: dict[int, int] = {}
        self.additions: list[Addition] = []
        self.all_nodes: list[Node] = []
        self.op_calls = 0

    def node_of(self, t: Tensor) -> Node:
        entry = self.nodes.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return self.new_node(t, (), live=False)

    def new_node(self, t: Tensor, parents: tuple, live: bool, *rest: Any) -> Node:
        self.serial += 1
        node = Node(self.serial, parents, live, *rest)
        self.nodes[id(t)] = (weakref.ref(t), node)
        self.all_nodes.append(node)
        return node

    # -- module calls ---------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        n = self.call_counts.get(id(module), 0)
        self.call_counts[id(module)] = n + 1
        tensors = [(index, t) for index, t in nested.leaves((args, kwargs)) if isinstance(t, Tensor)]
        located = tuple((index, self.node_of(t), tuple(t.shape)) for index, t in tensors)
        inputs = tuple(node for _, node, _ in located if node.live)
        ints = tuple(
            (index, t.detach().to("cpu", copy=True))
            for index, t in tensors
            if t.ndim == 1 and 1 < t.numel() <= MAX_INT_VALUES and not t.is_floating_point() and not t.is_complex()
            and t.dtype != torch.bool and t.device.type != "meta"
        )
        call = Call(module, n, len(self.calls), tuple(self.stack), inputs, located, ints, first=self.serial)
        self.calls.append(call)
        self.stack.append(call)

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        call = self.stack.pop()
        call.last = self.serial
        for index, t in nested.leaves(output):
            if isinstance(t, Tensor):
                node = self.node_of(t)
                if node.live:
                    node.chain += ((call, index),)

    # -- torch operations -----------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        inputs = nested.tensors((args, kwargs))
        if not inputs:
            return func(*args, **kwargs)
        nodes = [self.node_of(t) for t in inputs]
        if func in _ADD and len(args) >= 2 and kwargs.get("alpha", 1) == 1:
            self._note_addition(args[0], args[1])
        versions = [version_counter(t) for t in inputs]
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
        elif (
            name in _CAST and len(live_parents) == 1 and nodes[0] is live_parents[0] and isinstance(out, Tensor)
            and inputs[0].is_floating_point() and out.is_floating_point() and out.shape == inputs[0].shape
        ):
            scaled_from = live_parents[0]  # a float cast (HY V4's f(x).float()): elementwise, per sample alike
        gated: tuple = ()
        if name in _SCALE and len(live_parents) == 2 and len(inputs) == 2 and isinstance(out, Tensor):
            # a branch times a padding mask or a gate (TimesFM's MLP, adaLN's gate): either factor of a product,
            # the dividend of a quotient, where it has the output's shape
            pairs = ((0, 1), (1, 0)) if name in _MUL else ((0, 1),) if args and args[0] is inputs[0] else ()
            gated = tuple((nodes[i], nodes[j], None) for i, j in pairs if inputs[i].shape == out.shape)
            if not gated and name in _MUL:  # neither factor has the product's shape: both broadcast to it
                expand = (SELF, tuple(out.shape))
                gated = tuple(
                    (nodes[i], nodes[j], LayoutOp(Tensor.expand, expand, MappingProxyType({}), tuple(inputs[i].shape)))
                    for i, j in pairs
                    if inputs[i].ndim == out.ndim
                )
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
            op = LayoutOp(func, (SELF, *args[1:]), MappingProxyType(dict(kwargs)), tuple(args[0].shape))
            layout_from = (live_parents[0], op)
        parents = tuple(nodes)
        live = bool(live_parents)
        self.op_calls += 1
        call = self.op_calls
        mutated = set()
        for t, v in zip(inputs, versions):
            if version_counter(t) != v and id(t) not in mutated:
                mutated.add(id(t))
                self.new_node(t, parents, live, linear, mixing, scaled_from, name, None, call, gated)
        outs = nested.tensors(out)
        if not outs:
            return out
        input_ids = {id(t) for t in inputs}
        single = len(outs) == 1
        for o in outs:
            if id(o) in input_ids:
                continue  # identity (e.g. contiguous(), eval dropout) or mutated above
            self.new_node(
                o, parents, live, linear, mixing, scaled_from if single else None, name, layout_from if single else None, call,
                gated if single else (),
            )
        return out

    def _note_addition(self, a: Any, b: Any) -> None:
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape or a is b:
            return
        na, nb = self.node_of(a), self.node_of(b)
        if na.live or nb.live:
            sketches = tuple(self._sketches(t) for t in (a, b)) if self.sketch_sizes else ()
            self.additions.append(Addition(na, nb, tuple(a.shape), tuple(self.stack), self.serial, sketches))

    def _sketches(self, t: Tensor) -> tuple[torch.dtype, dict[int, Tensor | None]]:
        i = self.sketch_sample
        return t.dtype, {
            d: sketch(t.narrow(d, i, 1), d, self.projections) for d, n in enumerate(t.shape) if n in self.sketch_sizes and n > i
        }


def record(
    model: nn.Module, args: tuple, kwargs: dict, *, sketch_sizes: frozenset[int] = frozenset(), sketch_sample: int = 0
) -> Recording:
    """Run ``model(*args, **kwargs)`` once and record it. The caller sets eval mode, ``no_grad`` and
    the random state; hooks are removed afterwards. Only shapes and provenance are kept, no tensor
    of the pass but small integer vectors passed to modules (the sample boundaries of a packed stream);
    with ``sketch_sizes`` each addition also keeps the ``sketch`` of sample ``sketch_sample`` of its
    operands along every dimension of one of those sizes (passes compared by that sample)."""
    rec = _Recorder(frozenset(sketch_sizes), sketch_sample)
    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(rec.post_hook))
        for t in nested.tensors((args, kwargs)):
            rec.new_node(t, (), True)
        with rec:
            outputs = model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return Recording(
        nodes=tuple(rec.all_nodes),
        calls=tuple(rec.calls),
        additions=tuple(rec.additions),
        call_counts=MappingProxyType(dict(rec.call_counts)),
        outputs=nested.map_tensors(outputs, fingerprint),  # the pass's tensors are not kept
        last_serial=rec.serial,
    )
