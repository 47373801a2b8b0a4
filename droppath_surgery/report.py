"""What was (or would be) patched: the site records, the printed table, and the one function that
renders a plan with its rates (``build_report``), for ``find_residual_branches``, ``apply_drop_path``
and ``drop_path_report`` alike."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .nn import DropPath, SkipDropPath
from .nn.skip import BELOW_MIN_SKIP_RATE
from .plan import LeftOut, PlannedSite, Target
from .schedules import describe

__all__ = ["Site", "Skipped", "DropPathReport", "Target", "build_report", "report_of_patch"]

Skipped = LeftOut  # a residual branch found but not patched, and why (``path``, ``block_path``, ``reason``)


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
        stack: the chain of blocks linked by one residual stream this branch belongs to (an
            encoder and a decoder, or two towers, are two stacks).
        rows_per_sample: how many entries of ``batch_dim`` belong to one sample (its attention
            windows, the frames / token positions a video model folds into the batch, or the patches
            a tower runs as a batch, all dropped together); 1 for a plain batch dimension.
        interleaved: a sample's rows are ``B`` apart (row ``j * B + s`` is row ``j`` of sample
            ``s``, patch-major) rather than consecutive.
        packed: ``batch_dim`` holds the rows of several samples one after another (a vision tower's
            patches of all images in one sequence); each call of the block gives their boundaries,
            and each sample's rows share one decision.
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
    stack: int = 0
    rows_per_sample: int = 1
    interleaved: bool = False
    packed: bool = False

    def with_rate(self, rate: float) -> Site:
        return replace(self, rate=rate)

    @property
    def target(self) -> Target:
        return Target(self.path, self.kind, self.block, self.block_path)


@dataclass
class DropPathReport:
    """The residual branches of a model and their drop rates.

    ``sites`` lists every patched branch in execution order; ``skipped`` the branches that were
    found but left alone (filtered out, or with no module to attach to), with the reason; ``not_run``
    the stacks of repeated blocks the example inputs never ran (``"path (n x Class)"``: no drop path
    reaches any residual branch in them; the notes say so too).
    """

    sites: tuple[Site, ...]
    num_blocks: int
    schedule: str
    skipped: tuple[Skipped, ...] = ()
    model_name: str = ""
    verified: bool | None = None
    notes: tuple[str, ...] = field(default=())
    not_run: tuple[str, ...] = ()

    @property
    def block_rates(self) -> dict[int, float]:
        """The rate of each block that has patched branches (the highest of its branches, where a
        per-branch schedule such as ``"timm"`` on NextViT gives them different rates)."""
        out: dict[int, float] = {}
        for s in self.sites:
            out[s.block] = max(s.rate, out.get(s.block, s.rate))
        return out

    @property
    def num_modules(self) -> int:
        """How many DropPath modules carry the sites (what ``remove_drop_path`` counts): fewer than the
        sites where one module ends several branches (HF ViT's ``dropout``, Dinov2's ``drop_path``)."""
        return len({s.path for s in self.sites})

    def __len__(self) -> int:
        return len(self.sites)

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per site (for logging: a table, a CSV row, an experiment tracker)."""
        return [dataclasses.asdict(s) for s in self.sites]

    def to_dict(self) -> dict[str, Any]:
        """The whole report as plain data (JSON-serializable but for tuples)."""
        return {
            "model": self.model_name,
            "schedule": self.schedule,
            "num_blocks": self.num_blocks,
            "num_branches": len(self.sites),
            "num_modules": self.num_modules,
            "verified": self.verified,
            "sites": self.records(),
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "notes": list(self.notes),
            "not_run": list(self.not_run),
        }

    def _title(self) -> str:
        title = f"drop path on {self.model_name or 'model'}: {len(self.sites)} branches in {self.num_blocks} blocks"
        if self.num_modules != len(self.sites):
            title += f" at {self.num_modules} DropPath modules (one module ends several branches)"
        stacks = len({s.stack for s in self.sites})
        if stacks > 1:
            title += f", {stacks} stacks"
        title += f", schedule {self.schedule}"
        if self.sites:
            rates = [s.rate for s in self.sites]
            title += f", rates {min(rates):.3f}..{max(rates):.3f}"
        if self.verified is not None:
            title += ", eval output verified bitwise unchanged" if self.verified else ", not verified"
        return title

    def _table(self) -> tuple[tuple, list[tuple]]:
        header: tuple = ("block", "branch", "rate", "kind", "batch dim", "shape", "path")
        rows: list[tuple] = [
            (
                str(s.block),
                str(s.branch),
                f"{s.rate:.4f}",
                f"{s.kind} {s.replaced}",
                str(s.batch_dim) + (f" ({s.rows_per_sample} rows a sample{', B apart' if s.interleaved else ''})" if s.rows_per_sample > 1 else "")
                + (" (packed)" if s.packed else ""),
                "x".join(str(d) for d in s.shape),
                s.path + "".join(f"[{i!r}]" for i in s.output_index),
            )
            for s in self.sites
        ]
        if any(s.compute != "mask" for s in self.sites):
            header = (*header[:4], "compute", *header[4:])
            rows = [(*r[:4], s.compute, *r[4:]) for r, s in zip(rows, self.sites)]
        if len({s.stack for s in self.sites}) > 1:
            header = ("stack", *header)
            rows = [(str(s.stack), *r) for r, s in zip(rows, self.sites)]
        return header, rows

    def __str__(self) -> str:
        header, rows = self._table()
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = [self._title(), "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        for s in self.skipped:
            lines.append(f"skipped {s.path} (block {s.block_path or '-'}): {s.reason}")
        lines += list(self.notes)
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        """The table for notebooks."""
        header, rows = self._table()
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        extra = [f"skipped {s.path} (block {s.block_path or '-'}): {s.reason}" for s in self.skipped] + list(self.notes)
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in extra)
        return (
            f"<div><p><b>{html.escape(self._title())}</b></p><table><thead><tr>{cells}</tr></thead>"
            f"<tbody>{body}</tbody></table>" + (f"<ul>{notes}</ul>" if notes else "") + "</div>"
        )


def build_report(
    sites: Sequence[tuple[PlannedSite, Sequence[float], Sequence[str]]],
    *,
    num_blocks: int,
    schedule: str,
    model_name: str,
    left_out: Sequence[LeftOut] = (),
    verified: bool | None = None,
    notes: Sequence[str] = (),
    not_run: Sequence[str] = (),
) -> DropPathReport:
    """A report of planned sites with, per branch, its rate and what the compute column says."""
    rows = [
        Site(
            path=site.path,
            block=br.block,
            rate=branch_rate,
            kind=site.kind,
            batch_dim=br.batch_dim,
            block_path=br.block_path,
            branch=br.branch,
            replaced=type(site.module).__name__,
            output_index=site.output_index,
            shape=br.shape,
            compute=compute,
            stack=br.stack,
            rows_per_sample=br.rows_per_sample,
            interleaved=br.interleaved,
            packed=br.segments is not None,
        )
        for site, rates, computes in sites
        for br, branch_rate, compute in zip(site.branches, rates, computes)
    ]
    rows.sort(key=lambda s: (s.block, s.branch))
    return DropPathReport(
        sites=tuple(rows),
        num_blocks=num_blocks,
        schedule=schedule,
        skipped=tuple(left_out),
        model_name=model_name,
        verified=verified,
        notes=tuple(notes),
        not_run=tuple(not_run),
    )


def report_of_patch(drops: Sequence[DropPath], *, verified: bool | None = None, notes: Sequence[str] = ()) -> DropPathReport:
    """The report of a patched model, read off its attached DropPaths (``execute.patched_modules``,
    non-empty): their records, their current rates and, with skipping, what each branch computes."""
    rows = []
    masking: list[str] = []
    below: dict[float, int] = {}  # min_skip_rate -> branches that could skip but mask at their current rate
    for drop in drops:
        site = drop.patch.site
        computes = ["mask"] * len(site.branches)
        if isinstance(drop, SkipDropPath) and drop.skip_states:
            computes = [drop.compute(s) for s in drop.skip_states]
            masking += [
                f"masks instead of skipping: {s.path} (block {br.block}): {s.reason}"
                for br, s in zip(site.branches, drop.skip_states)
                if s.reason
            ]
            if drop.rate < drop.min_skip_rate:
                below[drop.min_skip_rate] = below.get(drop.min_skip_rate, 0) + sum(c != "mask" for c in computes)
        else:  # a plain DropPath in skip mode (a packed branch): the plan's reason to mask
            masking += [
                f"masks instead of skipping: {site.path} (block {br.block}): {br.mask_reason}"
                for br in site.branches
                if br.mask_reason
            ]
        rows.append((site, [drop.rate_of(br.call) for br in site.branches], computes))
    masking += [
        f"{n} branches could skip but mask at their current rate, below min_skip_rate={m:g} (skipping costs more "
        f"than it saves there); they skip once their rate reaches it ({BELOW_MIN_SKIP_RATE!r} in the compute column)"
        for m, n in below.items()
        if n
    ]
    record = drops[0].patch
    return build_report(
        rows,
        num_blocks=record.plan.num_blocks,
        schedule=describe(record.schedule),
        model_name=record.plan.model_name,
        left_out=record.plan.left_out,
        verified=verified,
        notes=[*masking, *notes],
        not_run=record.plan.not_run,
    )
