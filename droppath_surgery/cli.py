"""``droppath-surgery inspect``: build a model by name and print where drop path would go, with rates.

    droppath-surgery inspect timm:vit_base_patch16_224 --rate 0.1 --schedule linear
    droppath-surgery inspect hf:./my-vit-checkpoint          # a local folder with a config.json
    droppath-surgery inspect hf:facebook/dinov2-small --schedule uniform   # a Hub id (needs the network)
    droppath-surgery inspect torchvision:swin_t --plot rates.png
    droppath-surgery inspect timm:cait_xxs24_224 --schedule timm   # timm's own per-branch rates
    python -m droppath_surgery inspect ...

Models get random weights (nothing is downloaded but a Hub config) unless ``--pretrained`` is given.
Nothing is trained or patched: the sites come from ``find_residual_branches``, which changes nothing.
Every error is one line on stderr and a non-zero exit: 2 for a bad command line, 1 otherwise.

This module is never imported by the library, and it imports nothing heavy itself: torch, timm,
transformers, torchvision and matplotlib are imported only when a command runs and needs them, so
``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import ast
import collections
import difflib
import os
import re
import socket
import sys
from typing import Any, NoReturn, Sequence
from urllib.parse import urlsplit

PROG = "droppath-surgery"
LIBRARIES = ("timm", "hf", "torchvision")
USAGE_ERROR, RUNTIME_ERROR = 2, 1
# The named schedules, for --help without importing torch; tests/test_cli.py checks that this is
# droppath_surgery.schedules.schedule_names(), which validates --schedule when a command runs.
SCHEDULE_NAMES = ("efficientnet", "exp", "linear", "log", "sigmoid", "sin", "timm", "uniform")
HUB_PROBE_TIMEOUT_S = 3.0


class CliError(Exception):
    """An error to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = RUNTIME_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", USAGE_ERROR)


def _one_line(text: Any, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _need(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CliError(f"this needs {module}, which is not installed: pip install 'droppath-surgery[{extra}]'") from None


def parse_spec(spec: str) -> tuple[str, str]:
    """``'timm:vit_base_patch16_224'`` -> ``('timm', 'vit_base_patch16_224')``."""
    library, sep, name = spec.partition(":")
    if not sep or library not in LIBRARIES:
        raise CliError(
            f"model must be LIBRARY:NAME with LIBRARY one of {', '.join(LIBRARIES)} "
            f"(e.g. timm:vit_base_patch16_224, hf:./checkpoint, torchvision:vit_b_16), got {spec!r}",
            USAGE_ERROR,
        )
    if not name:
        raise CliError(f"no model name after {library}: in {spec!r}", USAGE_ERROR)
    return library, name


def _rejected_keys(exc: BaseException, kwargs: dict) -> list[str]:
    """The keys of ``kwargs`` that an error message names (``unexpected keyword argument 'foo'``)."""
    text = str(exc)
    return [key for key in kwargs if re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", text)]


def _bad_model_arg(what: str, exc: BaseException, kwargs: dict) -> CliError:
    keys = _rejected_keys(exc, kwargs)
    if len(keys) == 1 or (keys and len(keys) < len(kwargs)):
        named = ", ".join(f"--model-arg {k}=..." for k in keys)
        return CliError(f"{what} does not accept {named}: {_one_line(exc)}")
    return CliError(f"{what} does not accept one of {sorted(kwargs)}: {_one_line(exc)}")


def parse_model_args(items: Sequence[str] | None) -> dict[str, Any]:
    """``['img_size=64', 'depth=2']`` -> ``{'img_size': 64, 'depth': 2}`` (values are Python literals or strings)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--model-arg takes KEY=VALUE (e.g. img_size=384), got {item!r}", USAGE_ERROR)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


# -- model builders -------------------------------------------------------------------------------


def build_timm(name: str, pretrained: bool, kwargs: dict) -> Any:
    timm = _need("timm", "timm")
    if not timm.is_model(name):
        raise CliError(f"unknown timm model {name!r}{_suggest(name, timm.list_models())} (list them with timm.list_models())")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise _bad_model_arg(f"timm model {name!r}", exc, kwargs) from None


def build_torchvision(name: str, pretrained: bool, kwargs: dict) -> Any:
    torchvision = _need("torchvision", "torchvision")
    names = torchvision.models.list_models()
    if name not in names:
        raise CliError(f"unknown torchvision model {name!r}{_suggest(name, names)} (list them with torchvision.models.list_models())")
    try:
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except TypeError as exc:
        raise _bad_model_arg(f"torchvision model {name!r}", exc, kwargs) from None


def _hf_local_path(name: str) -> str | None:
    """The folder ``name`` names, or None for a Hub id; a path that cannot be a model folder is an error."""
    path = os.path.expanduser(name)
    if os.path.exists(path):
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
            raise CliError(f"{name!r} is not a folder with a config.json (a Hugging Face model folder)")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CliError(f"local path {name!r} does not exist (hf: takes a model folder with a config.json, or a Hub id such as google/vit-base-patch16-224)")
    return None


def hf_hub_access(name: str) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for ``hf:NAME``, found before transformers (or torch) is imported.

    A local folder or ``HF_HUB_OFFLINE=1`` needs nothing. Otherwise one TCP connection (a few seconds
    at most) tells whether the Hub answers; where it does not, a model in the local cache is loaded
    from there (``local_files_only=True``), and any other is refused in one line at once, instead of
    huggingface_hub's five retries with back-off.
    """
    if _hf_local_path(name) is not None or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return {}
    unreachable = _hub_unreachable()
    if not unreachable:
        return {}
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id huggingface_hub rejects, or no huggingface_hub: not cached either way
        cached = False
    if not cached:
        raise CliError(
            f"cannot load {name!r}: the Hugging Face Hub is unreachable ({unreachable}) and the model is not in "
            "the local cache; check the network, or pass a local folder (hf:./folder with a config.json)"
        )
    return {"local_files_only": True}


def build_hf(name: str, pretrained: bool, kwargs: dict, hf_class: str | None, hub: dict[str, Any] | None = None) -> Any:
    local_path = _hf_local_path(name)
    if hub is None:
        hub = hf_hub_access(name)
    transformers = _need("transformers", "hf")
    local = local_path is not None
    path = local_path or name
    cls_name = hf_class or "AutoModel"
    cls = getattr(transformers, cls_name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise CliError(f"transformers has no model class {cls_name!r}{_suggest(cls_name, [n for n in dir(transformers) if n.startswith(('Auto', cls_name[:3]))])}")
    try:
        config, unused = transformers.AutoConfig.from_pretrained(path, return_unused_kwargs=True, **hub, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if local:
            raise CliError(f"cannot read the config in {name!r}: {_first_line(exc)}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise CliError(
            f"cannot load {name!r} from the Hugging Face Hub"
            + (" (HF_HUB_OFFLINE is set)" if offline else " (no such repository, or no access)")
            + f": {_first_line(exc)}"
        ) from None
    if unused:
        raise CliError(
            f"{type(config).__name__} of {name!r} has no {', '.join(f'--model-arg {k}=...' for k in unused)} "
            f"(Hugging Face --model-arg sets an existing config field, e.g. num_hidden_layers=4)"
        )
    try:
        if pretrained:
            return cls.from_pretrained(path, config=config, **hub)
        if cls_name.startswith("Auto"):
            return cls.from_config(config)
        return cls(config)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CliError(f"cannot build {cls_name} for {name!r}: {_first_line(exc)}") from None


def _hub_unreachable() -> str:
    """Why the Hugging Face Hub cannot be reached (one TCP connection, a few seconds at most), or ''."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except TimeoutError:
        return f"{host}:{port}: no answer in {HUB_PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or type(exc).__name__}"
    return ""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return _one_line(f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__, 300)


def build_model(
    spec: str, *, pretrained: bool = False, model_args: dict | None = None, hf_class: str | None = None,
    hub: dict[str, Any] | None = None,
) -> Any:
    """A model by ``LIBRARY:NAME``, random weights unless ``pretrained``; ``hub``: see ``hf_hub_access``."""
    library, name = parse_spec(spec)
    kwargs = dict(model_args or {})
    if library == "timm":
        return build_timm(name, pretrained, kwargs)
    if library == "torchvision":
        return build_torchvision(name, pretrained, kwargs)
    return build_hf(name, pretrained, kwargs, hf_class, hub)


# -- plot -------------------------------------------------------------------------------------------


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib, which is not installed: pip install 'droppath-surgery[plot]'") from None
    return plt


def stages_of(sites: Sequence[Any]) -> list[tuple[str, int, int]]:
    """(name, first block, last block) of each run of consecutive blocks held by the same container
    (``layers.0.blocks`` in a Swin, ``features.3`` in a torchvision CNN), prefixed by the stack where
    the model has several (an encoder and a decoder, two towers); a single run where there is one."""
    runs: list[tuple[str, int, int]] = []
    stacks = {s.stack for s in sites}
    for site in sorted(sites, key=lambda s: (s.block, s.branch)):
        parent = site.block_path.rpartition(".")[0] or "(top level)"
        name = f"stack {site.stack}: {parent}" if len(stacks) > 1 else parent
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], site.block)
        else:
            runs.append((name, site.block, site.block))
    return runs


def plot_rates(report: Any, path: str, title: str) -> None:
    """Draw the rate of every branch over the blocks of a report to ``path`` (PNG, SVG, PDF: by its extension).

    Each branch is a marker of its own (offset within its block, one marker shape per branch position,
    so two branches with the same rate both show); the line is the block rate; stages (runs of blocks
    in one container) are shaded bands named above the plot; the legend sits outside the data.
    """
    plt = _matplotlib()
    sites = list(report.sites)
    rates = report.block_rates
    blocks = sorted(rates)
    per_block = collections.Counter(s.block for s in sites)
    widest = max(per_block.values(), default=1)
    stages = stages_of(sites)
    fig, ax = plt.subplots(figsize=(8.5, 3.6), dpi=120)
    top = max([*rates.values(), 1e-3])
    for i, (name, first, last) in enumerate(stages):
        if len(stages) > 1:
            if i % 2 == 0:
                ax.axvspan(first - 0.5, last + 0.5, color="0.92", zorder=0, lw=0)
            ax.axvline(first - 0.5, color="0.6", lw=0.6, zorder=1)
            ax.text((first + last) / 2, 1.0, name if len(name) <= 3 * (last - first + 1) + 6 else f"{i}",
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7, color="0.3")
    ax.step(blocks, [rates[b] for b in blocks], where="mid", color="0.45", lw=1.2, zorder=2, label="block rate")
    markers = "os^vD<>P*X"
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for branch in range(widest):
        mine = [s for s in sites if s.branch == branch]
        if not mine:
            continue
        offset = (branch - (widest - 1) / 2) * min(0.5 / widest, 0.2)
        ax.scatter([s.block + offset for s in mine], [s.rate for s in mine], s=22, marker=markers[branch % len(markers)],
                   color=colors[branch % len(colors)], edgecolors="white", linewidths=0.5, zorder=3,
                   label=f"branch {branch} of its block ({len(mine)})" if widest > 1 else f"branch ({len(mine)})")
    ax.set_xlabel(f"block (execution order): {report.num_blocks} blocks, {len(sites)} branches"
                  + (f", {len(stages)} stages" if len(stages) > 1 else ""))
    ax.set_ylabel("drop rate")
    ax.set_ylim(bottom=0, top=top * 1.12)
    ax.set_xlim(min(blocks, default=0) - 0.7, max(blocks, default=0) + 0.7)
    ax.set_title(title, fontsize=9, pad=16 if len(stages) > 1 else 6)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    if len(stages) > 1:
        names = [f"{i}: {name}" for i, (name, first, last) in enumerate(stages) if len(name) > 3 * (last - first + 1) + 6]
        if names:
            ax.text(1.01, 0.0, "stages\n" + "\n".join(names[:12]) + ("\n..." if len(names) > 12 else ""),
                    transform=ax.transAxes, fontsize=6, va="bottom", color="0.3")
    fig.tight_layout()
    try:
        fig.savefig(path, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write the plot to {path!r}: {_first_line(exc)}") from None
    finally:
        plt.close(fig)


# -- commands ---------------------------------------------------------------------------------------


def _schedule_names() -> list[str]:
    from .schedules import schedule_names  # imports torch: only when a command runs

    return schedule_names()


def check_output_path(path: str, what: str = "--plot") -> None:
    """Fail before any work when ``path`` cannot be written: no such folder, a folder, not writable,
    or an extension matplotlib cannot write."""
    plt = _matplotlib()
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f"{what} {path!r} is a folder; give a file name such as rates.png", USAGE_ERROR)
    if not os.path.isdir(folder):
        raise CliError(f"{what} {path!r}: the folder {folder!r} does not exist", USAGE_ERROR)
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CliError(f"{what} {path!r}: not writable", USAGE_ERROR)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    types = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if ext not in types:
        raise CliError(
            f"{what} {path!r}: matplotlib cannot write {('.' + ext) if ext else 'a file without an extension'}; "
            f"use one of {', '.join('.' + t for t in sorted(types))}",
            USAGE_ERROR,
        )


def inspect_command(args: argparse.Namespace) -> int:
    # The cheap checks first, before torch is imported: the command line, the output path, the Hub.
    library, name = parse_spec(args.model)
    model_args = parse_model_args(args.model_arg)
    if args.plot:
        check_output_path(args.plot)
    hub = hf_hub_access(name) if library == "hf" else None

    from . import apply_drop_path, find_residual_branches
    from .checks import validate_rate
    from .errors import DropPathError

    if args.schedule not in _schedule_names():
        raise CliError(f"unknown schedule {args.schedule!r}; choose one of {', '.join(_schedule_names())}", USAGE_ERROR)
    try:
        validate_rate(args.rate, "--rate")
    except DropPathError as exc:
        raise CliError(_one_line(exc), USAGE_ERROR) from None
    model = build_model(args.model, pretrained=args.pretrained, model_args=model_args, hf_class=args.hf_class, hub=hub)
    try:
        if args.skip_dropped:
            # The model was built here and is thrown away: patching it shows which branches skip.
            report = apply_drop_path(model, args.rate, schedule=args.schedule, skip_dropped=True)
        else:
            report = find_residual_branches(model, rate=args.rate, schedule=args.schedule)
    except DropPathError as exc:
        raise CliError(_one_line(exc)) from None
    weights = "pretrained weights" if args.pretrained else "random weights"
    params = sum(p.numel() for p in model.parameters())
    call = f"apply_drop_path(model, {args.rate}, schedule={args.schedule!r}{', skip_dropped=True' if args.skip_dropped else ''})"
    print(f"{args.model} ({type(model).__name__}, {params / 1e6:.1f}M parameters, {weights}): rates that "
          f"{call} would give; " + ("the model built here was patched to find out" if args.skip_dropped else "nothing was changed"))
    print(report)
    if args.plot:
        plot_rates(report, args.plot, f"{args.model}: schedule {args.schedule!r}, rate {args.rate}")
        print(f"plot of the per-block rates written to {args.plot}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Add stochastic depth (drop path) to existing models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser(
        "inspect",
        help="print the residual branches of a model and the rates a schedule would give",
        description="Build a model by name (random weights unless --pretrained) and print the sites where "
        "apply_drop_path would put drop path, with the rate of each. Nothing is trained or changed.",
    )
    p.add_argument("model", help="timm:NAME, hf:FOLDER_OR_HUB_ID or torchvision:NAME")
    p.add_argument("--rate", type=float, default=0.1, help="drop rate of the deepest block (default %(default)s)")
    p.add_argument("--schedule", default="linear",
                   help=f"a named schedule: {', '.join(SCHEDULE_NAMES)} (default %(default)s: timm's default ramp; "
                   "'timm': per branch, the rates timm's own constructor gives, for timm: models)")
    p.add_argument("--pretrained", action="store_true", help="load pretrained weights (needs the network)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the per-block rate schedule (needs matplotlib)")
    p.add_argument("--skip-dropped", action="store_true",
                   help="also show which branches would run on the kept samples only (skip_dropped=True), and why "
                   "the others would mask")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="passed to the model constructor (timm/torchvision) or config (hf), e.g. img_size=384; repeatable")
    p.add_argument("--hf-class", metavar="CLASS",
                   help="transformers class for hf: models (default AutoModel), e.g. AutoModelForImageClassification")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error (for bug reports)")
    p.set_defaults(func=inspect_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv
    try:
        args = make_parser().parse_args(argv)
        if not getattr(args, "command", None):
            raise CliError("no command given; try 'droppath-surgery inspect timm:vit_base_patch16_224' or --help", USAGE_ERROR)
        return args.func(args)
    except CliError as exc:
        if show_traceback:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else (a model that fails to build, ...): still one line
        if show_traceback:
            raise
        print(f"{PROG}: error: {_first_line(exc)} (rerun with --traceback for details)", file=sys.stderr)
        return RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())
