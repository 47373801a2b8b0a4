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

This module is never imported by the library; timm, transformers, torchvision and matplotlib are
imported only when a command needs them.
"""

from __future__ import annotations

import argparse
import ast
import collections
import difflib
import os
import sys
from typing import Any, NoReturn, Sequence

PROG = "droppath-surgery"
LIBRARIES = ("timm", "hf", "torchvision")
USAGE_ERROR, RUNTIME_ERROR = 2, 1


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
        raise CliError(f"timm model {name!r} does not accept {sorted(kwargs)}: {_one_line(exc)}") from None


def build_torchvision(name: str, pretrained: bool, kwargs: dict) -> Any:
    torchvision = _need("torchvision", "torchvision")
    names = torchvision.models.list_models()
    if name not in names:
        raise CliError(f"unknown torchvision model {name!r}{_suggest(name, names)} (list them with torchvision.models.list_models())")
    try:
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except TypeError as exc:
        raise CliError(f"torchvision model {name!r} does not accept {sorted(kwargs)}: {_one_line(exc)}") from None


def build_hf(name: str, pretrained: bool, kwargs: dict, hf_class: str | None) -> Any:
    transformers = _need("transformers", "hf")
    path = os.path.expanduser(name)
    local = os.path.exists(path)
    if local:
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
            raise CliError(f"{name!r} is not a folder with a config.json (a Hugging Face model folder)")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CliError(f"local path {name!r} does not exist (hf: takes a model folder with a config.json, or a Hub id such as google/vit-base-patch16-224)")
    cls_name = hf_class or "AutoModel"
    cls = getattr(transformers, cls_name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise CliError(f"transformers has no model class {cls_name!r}{_suggest(cls_name, [n for n in dir(transformers) if n.startswith(('Auto', cls_name[:3]))])}")
    try:
        config = transformers.AutoConfig.from_pretrained(path if local else name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if local:
            raise CliError(f"cannot read the config in {name!r}: {_first_line(exc)}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise CliError(
            f"cannot load {name!r} from the Hugging Face Hub"
            + (" (HF_HUB_OFFLINE is set)" if offline else " (no network, or no such repository)")
            + f": {_first_line(exc)}"
        ) from None
    try:
        if pretrained:
            return cls.from_pretrained(path if local else name, config=config)
        if cls_name.startswith("Auto"):
            return cls.from_config(config)
        return cls(config)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CliError(f"cannot build {cls_name} for {name!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return _one_line(f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__, 300)


def build_model(spec: str, *, pretrained: bool = False, model_args: dict | None = None, hf_class: str | None = None) -> Any:
    library, name = parse_spec(spec)
    kwargs = dict(model_args or {})
    if library == "timm":
        return build_timm(name, pretrained, kwargs)
    if library == "torchvision":
        return build_torchvision(name, pretrained, kwargs)
    return build_hf(name, pretrained, kwargs, hf_class)


# -- plot -------------------------------------------------------------------------------------------


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib, which is not installed: pip install 'droppath-surgery[plot]'") from None
    return plt


def plot_rates(report: Any, path: str, title: str) -> None:
    """Draw the per-block rate schedule of a report to ``path`` (PNG, SVG, PDF: by its extension)."""
    plt = _matplotlib()
    rates = report.block_rates
    blocks = sorted(rates)
    points = collections.Counter((s.block, s.rate) for s in report.sites)  # per-branch rates may differ in a block
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
    ax.step(blocks, [rates[b] for b in blocks], where="mid", color="tab:blue", lw=1.5)
    ax.scatter([b for b, _ in points], [r for _, r in points], s=[12 * n for n in points.values()], color="tab:blue",
               zorder=3, label="branches of a block (marker size: how many)")
    ax.set_xlabel(f"block (execution order, {report.num_blocks} blocks)")
    ax.set_ylabel("drop rate")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write the plot to {path!r}: {_first_line(exc)}") from None
    finally:
        plt.close(fig)


# -- commands ---------------------------------------------------------------------------------------


def _schedule_names() -> list[str]:
    from .schedules import schedule_names

    return schedule_names()


def inspect_command(args: argparse.Namespace) -> int:
    from . import apply_drop_path, find_residual_branches
    from .checks import validate_rate
    from .errors import DropPathError

    # Check the cheap things before building a model.
    if args.schedule not in _schedule_names():
        raise CliError(f"unknown schedule {args.schedule!r}; choose one of {', '.join(_schedule_names())}", USAGE_ERROR)
    try:
        validate_rate(args.rate, "--rate")
    except DropPathError as exc:
        raise CliError(_one_line(exc), USAGE_ERROR) from None
    if args.plot:
        _matplotlib()
    model = build_model(args.model, pretrained=args.pretrained, model_args=parse_model_args(args.model_arg), hf_class=args.hf_class)
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
    parser = _Parser(prog=PROG, description="Add stochastic depth (drop path) to existing models.")
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
                   help=f"a named schedule: {', '.join(_schedule_names())} (default %(default)s: timm's default ramp; "
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
