"""What was (or would be) patched: the site record and the printed table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Site", "Skipped", "DropPathReport", "Target"]


class Target(NamedTuple):
    """What a schedule needs to rate one DropPath: where it is attached and its branches' block."""

    path: str
    kind: str  # "replace" (a placeholder was swapped) or "hook"
    block: int
    block_path: str


@dataclass(frozen=True)
class Site:
    """One residual branch that carries drop path.

    Attributes:
        path: module path where drop path acts: the replaced placeholder, or the module whose
            output is dropped (``kind == "hook"``).
        block: block index in execution order across all stages (both branches of a block share it).
        rate: the drop rate of this branch.
        kind: ``"replace"`` (a placeholder module was swapped for a DropPath) or ``"hook"`` (a
            DropPath child drops the module's output through a forward hook).
        batch_dim: the dimension of the branch output that indexes samples.
        block_path: module path of the block.
        branch: position of this branch among its block's branches (0, 1, ...).
        replaced: class name of the module that was replaced or hooked.
        output_index: for hooks, where in the module's output the branch tensor is (``()`` when the
            output is the tensor itself, ``(0,)`` for the first element of a tuple).
        shape: shape of the branch output seen in the traced forward pass.
        compute: ``"mask"`` (the branch runs on every sample and dropped ones are zeroed),
            ``"skip"`` (in training it runs on the kept samples only; ``skip_dropped=True``) or
            ``"mask<min"`` (it could skip, but its current rate is below ``min_skip_rate``, so it
            masks until a rate change raises it).
    """

    path: str
    block: int
    rate: float
    kind: str
    batch_dim: int
    block_path: str
    branch: int
    replaced: str
    output_index: tuple = ()
    shape: tuple = ()
    compute: str = "mask"

    def with_rate(self, rate: float) -> "Site":
        return Site(**{**self.__dict__, "rate": rate})

    @property
    def target(self) -> Target:
        return Target(self.path, self.kind, self.block, self.block_path)


@dataclass(frozen=True)
class Skipped:
    """A residual branch that was found but not patched, and why."""

    path: str
    block_path: str
    reason: str


@dataclass
class DropPathReport:
    """The residual branches of a model and their drop rates.

    ``sites`` lists every patched branch in execution order; ``skipped`` the branches that were
    found but left alone (filtered out, or with no module to attach to), with the reason.
    """

    sites: tuple[Site, ...]
    num_blocks: int
    schedule: str
    skipped: tuple[Skipped, ...] = ()
    model_name: str = ""
    verified: bool | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def block_rates(self) -> dict[int, float]:
        """The rate of each block that has patched branches (the highest of its branches, where a
        per-branch schedule such as ``"timm"`` on NextViT gives them different rates)."""
        out: dict[int, float] = {}
        for s in self.sites:
            out[s.block] = max(s.rate, out.get(s.block, s.rate))
        return out

    def __len__(self) -> int:
        return len(self.sites)

    def __str__(self) -> str:
        title = f"drop path on {self.model_name or 'model'}: {len(self.sites)} branches in {self.num_blocks} blocks"
        title += f", schedule {self.schedule}"
        if self.sites:
            rates = [s.rate for s in self.sites]
            title += f", rates {min(rates):.3f}..{max(rates):.3f}"
        if self.verified is not None:
            title += ", eval output verified bitwise unchanged" if self.verified else ", not verified"
        header: tuple = ("block", "branch", "rate", "kind", "batch dim", "shape", "path")
        rows = [
            (
                str(s.block),
                str(s.branch),
                f"{s.rate:.4f}",
                f"{s.kind} {s.replaced}",
                str(s.batch_dim),
                "x".join(str(d) for d in s.shape),
                s.path + "".join(f"[{i!r}]" for i in s.output_index),
            )
            for s in self.sites
        ]
        if any(s.compute != "mask" for s in self.sites):
            header = (*header[:4], "compute", *header[4:])
            rows = [(*r[:4], s.compute, *r[4:]) for r, s in zip(rows, self.sites)]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        for s in self.skipped:
            lines.append(f"skipped {s.path} (block {s.block_path or '-'}): {s.reason}")
        lines += list(self.notes)
        return "\n".join(lines)

    __repr__ = __str__
