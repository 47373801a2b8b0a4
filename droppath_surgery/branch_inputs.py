"""What a residual branch consumes: where it starts, and which full-batch tensors it takes in.

Skipping the compute of dropped samples (``skip.py``) runs a branch on a subset of the batch. The
engine knows where a branch ends (``trace.py``); skipping also needs every place where the branch
takes in a tensor that holds the whole batch, so the subset can be taken there, and proof that
nothing else about the branch depends on the batch. All of it comes from the same recorded pass
(``record.py``), with no per-model code:

* **The branch's values**: those computed from the merge's *start* (the residual stream, or the
  common input of a fork) on which the branch end depends.
* **The branch's calls**: the outermost module calls inside the block that return such a value
  (``norm1``, ``attn``, ``ls1`` in ``x + drop_path1(ls1(attn(norm1(x))))``). A module nested in one
  of them runs on whatever its caller gives it.
* **Entries**: the branch calls, in call order, that take a live tensor not computed from the
  output of an earlier entry: the stream itself, and anything else the branch consumes that holds
  the batch (an attention mask, position ids of shape ``(N, L)``, HF keyword arguments). Each such
  argument is subset along its batch dimension, the one whose size is the batch size (for the
  stream: the branch's own batch dimension). An argument without the batch (a ``(1, L)`` position
  table, rotary embeddings) is passed whole. The first entry draws the kept samples.
* **Reasons not to skip**, decided here from the pass (``skip.py`` adds a run-time check):
  batch statistics in the branch (a BatchNorm module or a functional ``batch_norm``: exact in
  eval, batch-coupled in training), a branch value that leaves the branch other than through its
  end (returned by the block, or used after the addition), an entry module that also runs
  elsewhere in the pass, and a branch with no module call to take its input at. What the pass
  cannot show (code that reshapes with the full batch size, ``x.view(batch_size, ...)``, or mixes
  samples) is caught by ``skip.py``'s run-time check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .record import Call, Merge, Node

__all__ = ["BranchInputs", "Entry", "EntryArg", "branch_inputs"]


@dataclass(frozen=True)
class EntryArg:
    """A full-batch tensor argument of an entry call: where it is, and its batch dimension."""

    location: tuple  # (i,) / (name,) for an argument, (i, j) / (name, j) inside a tuple or list
    batch_dim: int


@dataclass
class Entry:
    """A module call where the branch takes in full-batch tensors."""

    module: nn.Module
    path: str
    args: tuple[EntryArg, ...]


@dataclass
class BranchInputs:
    """Where one branch takes in the batch, or why it cannot run on a subset of the batch."""

    entries: list[Entry] = field(default_factory=list)  # in call order: the first draws
    reason: str = ""  # empty when the branch can be skipped


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


def _window(nodes: list[Node], first: int, last: int) -> list[Node]:
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


def branch_inputs(trace: Any, branch: Any, paths: dict[int, str]) -> BranchInputs:
    """Entries of ``branch`` (a ``trace.Branch``) in the pass recorded by ``trace``, or the reason
    it cannot be skipped exactly."""
    rec = trace.recorder
    merge: Merge | None = branch.merge
    if rec is None or merge is None or merge.start is None:
        return BranchInputs(reason="the traced pass did not record where this branch starts")
    start, end = merge.start, merge.end
    runner = merge.stack[-1] if merge.stack else None
    last = runner.last if runner is not None else rec.serial
    batch = branch.shape[branch.batch_dim]

    branch_values = _ancestors(end, start)
    window = _window(rec.all_nodes, start.serial, last)
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
    if not outer:
        return BranchInputs(reason="no module call takes in the branch's input, so there is no place to take the subset")
    inside = {id(c) for c in outer}
    inside |= {id(c) for c in rec.calls if any(id(s) in inside for s in c.stack)}

    # Walk the pass in order: which values are computed on the subset, and where full-batch
    # tensors enter the branch.
    subset: set[int] = set()
    entries: list[Entry] = []
    pending = list(outer)

    def enter(call: Call) -> str:
        args = []
        for location, node, shape in call.args:
            if not node.live or node.serial in subset or node is end:
                continue  # the end is full again: drop path scattered it back into the batch
            preferred = branch.batch_dim if node is start and len(shape) == len(branch.shape) else None
            dim = _batch_dim_of(shape, batch, preferred)
            if dim is not None:
                args.append(EntryArg(location, dim))
        if args:
            module = call.module
            path = paths.get(id(module), type(module).__name__)
            if trace.calls.get(id(module), 0) != 1:
                return f"the branch takes in the batch at {path}, which also runs elsewhere in the forward pass"
            entries.append(Entry(module, path, tuple(args)))
        return ""

    for n in window:
        while pending and pending[0].first < n.serial:
            why = enter(pending.pop(0))
            if why:
                return BranchInputs(reason=why)
        if n is end:
            continue
        call = next((c for c in outer if c.first < n.serial <= c.last), None)
        if call is not None:
            if n.live:
                subset.add(n.serial)
            continue
        if any(p.serial in subset for p in n.parents):
            subset.add(n.serial)
    for call in pending:
        why = enter(call)
        if why:
            return BranchInputs(reason=why)
    if not entries:
        return BranchInputs(reason="no module call takes in the branch's input, so there is no place to take the subset")

    # Nothing computed on the subset may leave the branch other than through its end.
    for n in window:
        if n.serial not in subset:
            continue
        if n.serial > merge.serial:
            return BranchInputs(reason="the block uses a value computed inside the branch after the residual addition")
        for call, _ in n.chain:
            if id(call) not in inside:
                what = paths.get(id(call.module), type(call.module).__name__) or "the model"
                return BranchInputs(reason=f"a value computed inside the branch is also returned by {what}")
        if n.op == "batch_norm":
            return BranchInputs(reason="the branch normalizes with batch statistics (batch_norm), which couples samples in training")
    for call in rec.calls:
        if id(call) in inside and isinstance(call.module, nn.modules.batchnorm._BatchNorm):
            path = paths.get(id(call.module), type(call.module).__name__)
            return BranchInputs(
                reason=f"{path} is a {type(call.module).__name__}: in training its batch statistics couple the samples"
            )
    return BranchInputs(entries=entries)
