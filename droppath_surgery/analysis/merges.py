"""Residual merges: which recorded additions add a branch back to the stream it came from.

``a + b`` is a merge when one operand (the stream) is an ancestor of the other (``x + f(x)``), or
when both come from an input of the call that adds by paths of different length (``downsample(x) +
f(x)``, parallel blocks; a hyper-connection's ``comb^T @ h + post * f(x)``); the branch must be a
module's output, up to per-sample-neutral scalings and replayable layout operations (``view``,
``permute``, slicing, the broadcast of an outer product). ``find_merges`` says for each
whether it computes something and whether its stream was computed inside the call that adds. A sum
that goes on as no stream (DETR's ``h + pos``, feeding only queries and keys) is no merge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .record import Addition, Call, Node, Recording

__all__ = ["Merge", "find_merges"]


@dataclass(frozen=True)
class Merge:
    """A residual merge seen in the pass."""

    end: Node  # the branch value a module call returned (``end.chain``)
    shape: tuple  # shape of the branch as added (the stream's shape)
    stack: tuple[Call, ...]  # module calls enclosing the addition, outermost first
    kind: str  # "residual" (stream is an ancestor) or "fork" (both from a common input)
    computes: bool  # the branch has a non-linear operation and one that mixes channels
    start: Node  # the stream (residual) or the common input (fork) the branch starts from
    serial: int  # serial of the last value made before the addition
    layout: tuple = ()  # layout operations from the module output (``end``) to the added tensor, in order
    inner_stream: bool = False  # the stream was computed inside the call running the addition
    addition: int = -1  # index of the addition in the recording
    operand: int = 0  # which operand of the addition is the branch (0: a, 1: b)

    @property
    def key(self) -> tuple:
        """The module calls that ended the branch: the same in every pass over the same model."""
        return tuple((id(call.module), call.index) for call, _ in self.end.chain)


def search_back(node: Node, target: Node, barrier: frozenset = frozenset()) -> tuple[int | None, list[Node]]:
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
    """The value a module returned that this branch value is, up to per-sample-neutral scalings, products
    with values not computed from it (a padding mask, a gate: they commute with a per-sample mask) and
    layout operations; and those layout operations, in the order they ran."""
    layout = []
    while not node.chain:
        if node.scaled_from is not None:
            node = node.scaled_from
        elif node.layout_from is not None:
            node, op = node.layout_from
            layout.append(op)
        elif (shifted := _biased(node)) is not None:
            node = shifted  # (f + b): a dropped branch leaves the constant b, the same for every sample
        elif node.gated:
            found = []
            for scaled, gate, expand in node.gated:
                end, before = _branch_end(scaled)
                if end is not None and search_back(gate, end)[0] is None and gate is not end:
                    after = before + ((expand,) if expand is not None else ()) + tuple(reversed(layout))
                    if expand is None:
                        return end, after
                    found.append((end, after))
            # Of two broadcast factors that are both module outputs (a hyper-connection's ``post`` and its layer's
            # output), the branch is the one computed last: the other was computed before it, to scale it.
            return max(found, key=lambda f: f[0].serial) if found else (None, ())
        else:
            return None, ()
    return node, tuple(reversed(layout))


_ADD_OPS = {"add", "add_", "__add__", "__radd__", "__iadd__"}


def _unscaled(node: Node) -> Node:
    """The value ``node`` is up to scalings by numbers or parameters and shifts by constants."""
    while not node.chain:
        inner = node.scaled_from or _biased(node)
        if inner is None:
            return node
        node = inner
    return node


def _biased(node: Node) -> Node | None:
    """The live value that ``node`` adds a constant to (a bias parameter: Zaya's residual helper computes
    ``(f(x) + b) * s + (x + c) * t``); None if it is no such sum. A dropped branch leaves ``b * s``, the
    same for every sample, and the stream keeps its constant."""
    if node.op not in _ADD_OPS or node.chain or len(node.parents) != 2:
        return None
    live = [p for p in node.parents if p.live]
    return live[0] if len(live) == 1 else None


def _addends(node: Node, stream: Node) -> list[Node]:
    """The branches summed into ``node`` before it is added to ``stream`` (GPT-NeoX's
    ``mlp_out + attn_out + x``, Falcon's ``mlp_out += attn_out``): the live operands of a chain of
    additions that are module outputs, each computed from ``stream``; empty unless there are two."""
    if node.op not in _ADD_OPS or node.chain:
        return []
    out: list[Node] = []
    for parent in node.parents:
        if not parent.live:
            return []
        if _branch_end(parent)[0] is not None:
            if search_back(parent, stream)[0] is None:
                return []
            out.append(parent)
        else:
            inner = _addends(parent, stream)
            if not inner:
                return []
            out += inner
    return out if len(out) >= 2 else []


def _merge(
    add: Addition, i: int, operand: int, kind: str, visited: list[Node], start: Node, inner: bool = False, branch: Node | None = None
) -> Merge | None:
    end, layout = _branch_end(branch if branch is not None else (add.b if operand else add.a))
    if end is None:
        return None
    stack = add.stack
    if layout and not (stack and any(stack[-1] in call.stack for call, _ in end.chain)):
        return None  # through layout operations only to a module run by the call that adds
    computes = any(not n.linear for n in visited) and any(n.mixing for n in visited)
    return Merge(end, add.shape, stack, kind, computes, start, add.serial, layout, inner, i, operand)


def _residual(add: Addition, i: int, operand: int, visited: list[Node], stream: Node, inner: bool) -> list[Merge]:
    """``stream + branch``, or ``stream + (b1 + b2 + ...)``: one merge per branch."""
    merge = _merge(add, i, operand, "residual", visited, stream, inner)
    if merge is not None:
        return [merge]
    summed = _addends(_unscaled(add.b if operand else add.a), stream)  # GraniteMoeHybrid's x + (moe(h) + mlp(h)) * c
    merges = [_merge(add, i, operand, "residual", search_back(b, stream)[1], stream, inner, b) for b in summed]
    return [m for m in merges if m is not None]


def _classify(add: Addition, i: int, carried: tuple[Node, ...] = ()) -> list[Merge]:
    na, nb = add.a, add.b
    stack = add.stack
    # x + f(x): the stream is an ancestor of the branch; also c * x + f(x), the stream scaled by numbers or
    # parameters (Ergo's learned per-channel residual gate), or shifted by a constant (Zaya's (x + b) * c): a dropped
    # sample keeps c * x.
    for stream, branch, operand in ((na, nb, 1), (nb, na, 0)):
        if not branch.live:
            continue
        stream = _unscaled(stream)
        depth, visited = search_back(branch, stream)
        if depth is not None:
            inner = bool(stack) and stream.live and stream.serial > stack[-1].first
            return _residual(add, i, operand, visited, stream, inner)
    # shortcut(x) + f(x): both computed from an input of the call running the addition; or mix(s) + f(s), one
    # operation on ``s`` against a branch of ``s``, where ``s`` is the stream carried on by a merge this call ran
    # before (``carried``: a hyper-connection layer's second merge).
    if not stack or not (na.live and nb.live):
        return []
    inputs = stack[-1].inputs
    forks = [(fork, frozenset(n.serial for n in inputs if n is not fork), False) for fork in inputs]
    for fork, barrier, inner in forks + [(s, frozenset(), True) for s in carried]:
        # Each operand must come from the fork input itself, not through another input of the call.
        da, va = search_back(na, fork, barrier)
        db, vb = search_back(nb, fork, barrier)
        if da is None or db is None or da == db:
            continue
        # A shortcut one operation from the fork is the stream (mixed), even where that operation's other operand
        # and the branch are pieces of one split (a hyper-connection's ``comb`` and ``post``).
        one_step = min(da, db) == 1
        if (inner and not one_step) or (not one_step and _pieces(va, vb, fork)):
            continue
        operand, visited = (0, va) if da > db else (1, vb)
        merge = _merge(add, i, operand, "fork", visited, fork, inner)
        return [merge] if merge is not None else []
    return []


_PIECE_OPS = {"split", "split_with_sizes", "tensor_split", "chunk", "unbind"}  # one call, several pieces


def _pieces(va: list[Node], vb: list[Node], fork: Node) -> bool:
    """Do the two operands start from different outputs of one split (``split``, ``chunk``, ``unbind``) of a
    value computed after the fork? Then they are parts of one branch (ViT-22B's ParallelScalingBlock: its fused
    ``in_proj`` split into attention and MLP inputs, summed as ``attn_out(a) + mlp_out(m)``), not a shortcut
    and a branch. The same rows taken twice (HiggsAudio's ``h[~mask] += mlp(norm(h[~mask]))``) are no pieces:
    each ``h[~mask]`` is an operation call of its own (``Node.call``)."""
    seen_a = {n.serial for n in va}
    seen_b = {n.serial for n in vb}

    def split_calls(visited: list[Node], other: set[int]) -> set[int]:
        """The split calls whose outputs lie on this path only."""
        return {
            n.call
            for n in visited
            if n.op in _PIECE_OPS and n.serial not in other and any(p.live and p.serial > fork.serial for p in n.parents)
        }

    return bool(split_calls(va, seen_b) & split_calls(vb, seen_a))


def find_merges(recording: Recording) -> list[Merge]:
    """Every residual merge of the recorded pass, in the order the additions ran.

    An addition ``a + b`` is a residual merge when one operand (the stream, possibly a parameter such
    as CaiT's class token) is an ancestor of the other, live, operand; or when both are live and were
    computed from an input of the module call running the addition, one by a strictly shorter path
    (the shortcut) than the other (the branch), not through another input of that call (CoaT's
    ``f(x4) + g(x3)``, ``x4`` made from ``x3`` before the call, is none), and not from different outputs
    of one split of a value computed after that input (``_pieces``: one branch's parts) unless the shortcut is one
    operation on that input; or when the shortcut is one operation on the stream an earlier merge of the same
    call made (a hyper-connection layer's second merge). The branch must be a module
    call's output, possibly followed by scalings by parameters or numbers and by layout operations on
    it alone, whose module runs inside the call that adds (a slice of the stream, TNT's
    ``patch_embed[:, 1:]``, leads back to the previous block).
    """
    merges: list[Merge] = []
    summed: set[int] = set()  # serials of sums of branches that a residual merge took apart
    by_serial = {n.serial: n for n in recording.nodes}
    carried: dict[int, list[Node]] = {}  # id(call) -> what the merges it ran made: the stream it carries on
    for i, add in enumerate(recording.additions):
        runner = id(add.stack[-1]) if add.stack else 0
        found = _classify(add, i, tuple(carried.get(runner, ())))
        made = by_serial.get(add.serial + 1)  # the sum (in-place: the new value of the stream)
        if found and add.stack and made is not None:
            carried.setdefault(runner, []).append(made)
        if len({m.end.serial for m in found}) > 1:
            summed |= _sum_serials(add.b if found[0].operand else add.a)
        merges += found
    # The sum's own addition (``mlp_out + attn_out``) is no fork merge of one branch into the other.
    merges = [m for m in merges if recording.additions[m.addition].serial + 1 not in summed]
    side = _side_values(recording, merges, by_serial)
    return [m for m in merges if m.addition not in side]


def _side_values(recording: Recording, merges: list[Merge], by_serial: dict[int, Node]) -> set[int]:
    """The additions among ``merges`` whose sum is a side value, not a stream: the sum reaches no later
    merge's stream and no model output except through branches; it is a fork's, or an operand goes on by
    itself (it is read again after the addition), or the stream is a constant (not computed from the inputs);
    and the call that adds does not return the sum. DETR's ``h + pos`` feeds only the queries and keys of an
    attention whose values and residual read ``h``; ``pos``, an ancestor of ``h`` through earlier queries, is
    no stream that ``h`` branches off. DiffusionGemma's ``mlp(h) + moe(h)``, normed and added to ``h``, is one
    branch, not a shortcut and a branch. A residual block nested in a branch (``x + g(block(x))``,
    ``block(x) = x + f(x)``; HRNet's head, ``incre(y1) + down(bottleneck(y0))``) returns its sum (or an activation
    of it), so it stays a merge although ``x`` is read again or its output feeds only a branch."""
    children: dict[int, list[Node]] = {}
    for node in recording.nodes:
        for parent in node.parents:
            children.setdefault(parent.serial, []).append(node)
    stream_of: dict[int, int] = {}  # serial of a merge's sum -> serial of its stream operand
    for m in merges:
        add = recording.additions[m.addition]
        stream_of[add.serial + 1] = (add.a if m.operand else add.b).serial
    streams = set(stream_of.values())
    outputs = {n.serial for n in recording.nodes if any(not call.stack for call, _ in n.chain)}

    def reaches(total: Node, found: Callable[[Node], bool], through: Callable[[Node], bool] = lambda n: True) -> bool:
        """Is some value made from ``total`` one that ``found`` accepts, walking only through values ``through``
        accepts, and into a merge's sum from its stream operand only, never from its branch?"""
        frontier, seen = [total], {total.serial}
        while frontier:
            node = frontier.pop()
            if found(node):
                return True
            for child in children.get(node.serial, ()):
                if child.serial not in seen and through(child) and stream_of.get(child.serial, node.serial) == node.serial:
                    seen.add(child.serial)
                    frontier.append(child)
        return False

    def carried(total: Node) -> bool:
        """Does the sum go on as a stream: to a later merge's stream, or to a model output?"""
        return reaches(total, lambda n: n.serial in outputs or n.serial in streams)

    def returned(total: Node, call: Call) -> bool:
        """Does ``call`` return the sum, or a value made from it by operations that mix nothing (an activation,
        a cast: ResNet's ``relu(x + f(x))``)? Not through a projection (an attention's queries)."""
        return reaches(total, lambda n: any(c is call for c, _ in n.chain), lambda n: n.serial <= call.last and not n.mixing)

    side = set()
    for m in merges:
        add = recording.additions[m.addition]
        total = by_serial.get(add.serial + 1)
        if total is None or (add.stack and returned(total, add.stack[-1])):
            continue  # a residual block, whatever its input does next and wherever its output goes
        operands = (add.a, add.b, m.end, m.start)  # as added, and the values they scale or re-view
        goes_on = any(c.serial > total.serial for n in operands for c in children.get(n.serial, ()))
        if (m.kind == "fork" or goes_on or not m.start.live) and not carried(total):
            side.add(m.addition)
    return side


def _sum_serials(node: Node) -> set[int]:
    """Serials of the values made by the chain of additions that summed the branches into ``node``."""
    if node.op not in _ADD_OPS or node.chain:
        return set()
    out = {node.serial}
    for parent in node.parents:
        out |= _sum_serials(parent)
    return out
