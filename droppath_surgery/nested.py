"""The one walker over nested data: tensors inside tuples, lists, namedtuples and dicts (Hugging Face
``ModelOutput`` included), as model inputs and outputs hold them.

``leaves`` lists every leaf with its index path, ``map_leaves`` rebuilds the structure with a function
applied to each leaf, ``replace_at`` rebuilds it with one leaf replaced. All three share one notion of
what a container is (``_items`` / ``_rebuild``), so they agree on every structure.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

__all__ = ["leaves", "tensors", "held_tensors", "map_leaves", "map_tensors", "get_at", "replace_at", "describe"]

Index = tuple[Any, ...]


def _items(obj: Any) -> list[tuple[Any, Any]] | None:
    """(key, child) pairs of a container, or None for a leaf."""
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (tuple, list)):
        return list(enumerate(obj))
    return None


def _rebuild(obj: Any, values: dict[Any, Any]) -> Any:
    """A container of ``obj``'s type with the children in ``values`` replaced."""
    if isinstance(obj, dict):
        # A dict subclass through its own copy protocol: an HF ModelOutput is rebuilt from its fields
        # (``dict.copy`` of a subclass calls it with no arguments, which a required field refuses).
        out = obj.copy() if type(obj) is dict else copy.copy(obj)
        for key, value in values.items():
            out[key] = value
        if isinstance(out, OrderedDict) and list(out) != list(obj):
            for key in obj:  # the copy follows the fields' order, not the one the keys were set in
                out.move_to_end(key)
        return out
    items = [values.get(i, item) for i, item in enumerate(obj)]
    if isinstance(obj, list):
        return items if type(obj) is list else type(obj)(items)
    if hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*items)
    return tuple(items) if type(obj) is tuple else type(obj)(items)


def leaves(obj: Any, index: Index = ()) -> Iterator[tuple[Index, Any]]:
    """(index path, leaf) for every leaf, depth first in order."""
    items = _items(obj)
    if items is None:
        yield index, obj
        return
    for key, child in items:
        yield from leaves(child, index + (key,))


def tensors(obj: Any) -> list[Tensor]:
    """The tensors among the leaves, in order (iterative: it runs for every operation of a probe)."""
    if isinstance(obj, Tensor):
        return [obj]
    out: list[Tensor] = []
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, Tensor):
            out.append(node)
            continue
        items = _items(node)
        if items:
            stack.extend(child for _, child in reversed(items))
    return out


def held_tensors(obj: Any, depth: int = 6) -> list[tuple[str, Tensor]]:
    """(attribute path, tensor) for every tensor an object holds, through its attributes, lists and
    dicts (a ``DynamicCache``'s layers' keys and values), in a stable order. Modules are not entered."""
    from torch import nn

    out: list[tuple[str, Tensor]] = []
    seen: set[int] = set()

    def walk(x: Any, path: str, left: int) -> None:
        if isinstance(x, Tensor):
            out.append((path, x))
            return
        if left == 0 or id(x) in seen or isinstance(x, (nn.Module, str, bytes, int, float, bool, type(None))):
            return
        seen.add(id(x))
        items = _items(x)
        if items is None:
            try:
                items = sorted(vars(x).items())
            except TypeError:  # no __dict__: nothing held
                return
        for key, child in items:
            walk(child, f"{path}.{key}" if isinstance(key, str) and items is not None else f"{path}[{key!r}]", left - 1)

    walk(obj, "", depth)
    return out


def map_leaves(obj: Any, fn: Callable[[Index, Any], Any], index: Index = ()) -> Any:
    """``obj`` rebuilt with ``fn(index, leaf)`` in place of every leaf."""
    items = _items(obj)
    if items is None:
        return fn(index, obj)
    return _rebuild(obj, {key: map_leaves(child, fn, index + (key,)) for key, child in items})


def map_tensors(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    """``obj`` rebuilt with ``fn(t)`` in place of every tensor ``t``; other leaves stay."""
    return map_leaves(obj, lambda _, leaf: fn(leaf) if isinstance(leaf, Tensor) else leaf)


def get_at(obj: Any, index: Index) -> Any:
    """The leaf at ``index``, or None where there is none."""
    for head in index:
        found = None
        for key, child in _items(obj) or ():
            if key == head:
                found = child
                break
        if found is None:
            return None
        obj = found
    return obj


def replace_at(obj: Any, index: Index, fn: Callable[[Tensor], Any]) -> Any:
    """``obj`` rebuilt with the tensor at ``index`` replaced by ``fn(tensor)``; anything else is
    returned as it is (an index that is not there, a leaf that is not a tensor)."""
    if not index:
        return fn(obj) if isinstance(obj, Tensor) else obj
    items = _items(obj)
    if items is None:
        return obj
    head = index[0]
    for key, child in items:
        if key == head:
            return _rebuild(obj, {key: replace_at(child, index[1:], fn)})
    return obj


def describe(index: Index, root: str = "output") -> str:
    """``(0, 'logits')`` -> ``"output[0]['logits']"``."""
    return root + "".join(f"[{key!r}]" for key in index)
