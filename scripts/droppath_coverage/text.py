"""Small text helpers shared by the judge and the renderer: one-line exceptions, joined reasons,
shortened lists and rate lists."""

from __future__ import annotations


def short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def listing(items, limit: int = 4, sep: str = ", ") -> str:
    items = list(items)
    text = sep.join(items[:limit])
    return text + (f"{sep}... (+{len(items) - limit})" if len(items) > limit else "")


def rates_text(values) -> str:
    uniq = sorted({round(v, 6) for v in values})
    return "/".join(f"{v:.6g}" for v in uniq)
