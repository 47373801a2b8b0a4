"""Where a branch takes in the batch, for ``skip_dropped=True``: its entries, or why it must mask.

* **The branch's values**: those computed from the merge's *start* (the residual stream, or the
  common input of a fork) on which the branch end depends.
* **The branch's calls**: the outermost module calls inside the block that return such a value
  (``norm1``, ``attn``, ``ls1`` in ``x + drop_path1(ls1(attn(norm1(x))))``).
* **Entries**: the branch calls, in call order, that take a live tensor not computed from the
  output of an earlier entry: the stream itself, and anything else the branch consumes that holds
  the batch (an attention mask, position ids of shape ``(N, L)``, HF keyword arguments), each subset
  along its batch dimension (the one whose size is the batch size; for the stream, the branch's own).
  An argument without the batch (a ``(1, L)`` position table, rotary embeddings) is passed whole.
* **Reasons to mask**: batch statistics in the branch (BatchNorm), a branch value that leaves the
  branch other than through its end, an entry module that also runs elsewhere, no module call to take
  the input at. What the pass cannot show (code that reshapes with the full batch size) is caught by
  the run-time exactness check (``verify.check_skipping``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..nn.skip import Entry, EntryArg
from .blocks import Branch, ModuleIndex
from .record import Call, Node, Recording

__all__ = ["BranchEntries", "branch_entries"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class BranchEntries:
    """Where one branch takes in the batch (the first entry draws), or why it must mask."""

    entries: tuple[Entry, ...] = ()
    reason: str = ""  # empty when the branch can skip


def _ancestors(end: Node, start: Node) -> set[int]:
    """Serials of the values, made after ``start``, that ``end`` depends on (``end`` included)."""
    seen = {end.serial}
    frontier = [end]
    while frontier:
        nxt = []
        for n in frontier:
            for p in n.parents:
                if p.serial > start.serial and p.serial not in seen:
                    seen.add(p.serial)
                    nxt.append(p)
        frontier = nxt
    return seen


def _window(nodes: tuple[Node, ...], first: int, last: int) -> list[Node]:
    """The values with serials in (first, last]; ``nodes`` is in serial order."""
    lo, hi = 0, len(nodes)
    while lo < hi:  # first index with serial > first
        mid = (lo + hi) // 2
        if nodes[mid].serial <= first:
            lo = mid + 1
        else:
            hi = mid
    out = []
    for n in nodes[lo:]:
        if n.serial > last:
            break
        out.append(n)
    return out


def _batch_dim_of(shape: tuple, batch: int, preferred: int | None) -> int | None:
    matches = [d for d, n in enumerate(shape) if n == batch]
    if not matches:
        return None
    return preferred if preferred in matches else matches[0]


def branch_entries(recording: Recording, branch: Branch, batch_dim: int, shape: tuple, index: ModuleIndex) -> BranchEntries:
    """Entries of ``branch`` (whose module output has ``shape`` with samples on ``batch_dim``), or the
    reason it cannot run on a subset of the batch exactly."""
    merge = branch.merge
    start, end = merge.start, merge.end
    runner = merge.stack[-1] if merge.stack else None
    last = runner.last if runner is not None else recording.last_serial
    batch = shape[batch_dim]

    branch_values = _ancestors(end, start)
    window = _window(recording.nodes, start.serial, last)
    live_after_start: set[int] = set()
    for n in window:  # values computed from the start
        if any(p is start or p.serial in live_after_start for p in n.parents):
            live_after_start.add(n.serial)
    branch_values &= live_after_start | {end.serial}

    # The outermost module calls below the block that return a branch value.
    returning: dict[int, Call] = {}
    for n in window:
        if n.serial in branch_values:
            for call, _ in n.chain:
                returning[id(call)] = call
    outer = [c for c in returning.values() if not any(id(s) in returning for s in c.stack)]
    # Below the block, not only below the call running the addition: BERT's BertSelfOutput adds
    # the stream it is handed to a branch that began in the attention before it.
    frame = next((c for c in reversed(merge.stack) if c.module is branch.block), runner)
    if frame is not None:
        outer = [c for c in outer if frame in c.stack]
    outer.sort(key=lambda c: c.order)
    no_place = "no module call takes in the branch's input, so there is no place to take the subset"
    if not outer:
        return BranchEntries(reason=no_place)
    inside = {id(c) for c in outer}
    inside |= {id(c) for c in recording.calls if any(id(s) in inside for s in c.stack)}

    # Walk the pass in order: which values are computed on the subset, and where full-batch
    # tensors enter the branch.
    subset: set[int] = set()
    entries: list[Entry] = []
    pending = list(outer)

    def enter(call: Call) -> str:
        args = []
        for location, node, arg_shape in call.args:
            if not node.live or node.serial in subset or node is end:
                continue  # the end is full again: drop path scattered it back into the batch
            preferred = batch_dim if node is start and len(arg_shape) == len(shape) else None
            dim = _batch_dim_of(arg_shape, batch, preferred)
            if dim is not None:
                args.append(EntryArg(location, dim))
        module = call.module
        path = index.path(module, type(module).__name__)
        once = recording.call_counts.get(id(module), 0) == 1
        if args and not once:
            return f"the branch takes in the batch at {path}, which also runs elsewhere in the forward pass"
        if once:  # without batch arguments it still watches for ones a training call adds (masks, position ids)
            entries.append(Entry(module, path, tuple(args), tuple((location, shape) for location, _, shape in call.args)))
        return ""

    for n in window:
        while pending and pending[0].first < n.serial:
            why = enter(pending.pop(0))
            if why:
                return BranchEntries(reason=why)
        if n is end:
            continue
        running = next((c for c in outer if c.first < n.serial <= c.last), None)
        if running is not None:
            if n.live:
                subset.add(n.serial)
            continue
        if any(p.serial in subset for p in n.parents):
            subset.add(n.serial)
    for call in pending:
        why = enter(call)
        if why:
            return BranchEntries(reason=why)
    if not any(e.args for e in entries):
        return BranchEntries(reason=no_place)

    # Nothing computed on the subset may leave the branch other than through its end.
    for n in window:
        if n.serial not in subset:
            continue
        if n.serial > merge.serial:
            return BranchEntries(reason="the block uses a value computed inside the branch after the residual addition")
        for call, _ in n.chain:
            if id(call) not in inside:
                what = index.path(call.module, type(call.module).__name__) or "the model"
                return BranchEntries(reason=f"a value computed inside the branch is also returned by {what}")
        if n.op == "batch_norm":
            return BranchEntries(reason="the branch normalizes with batch statistics (batch_norm), which couples samples in training")
    for call in recording.calls:
        if id(call) in inside and isinstance(call.module, _BATCH_NORMS):
            path = index.path(call.module, type(call.module).__name__)
            return BranchEntries(
                reason=f"{path} is a {type(call.module).__name__}: in training its batch statistics couple the samples"
            )
    return BranchEntries(entries=tuple(entries))
