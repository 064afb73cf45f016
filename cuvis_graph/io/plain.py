"""Plain, YAML-safe data: the one rule for writing parameters and configurations.

``None``, bools, ints, floats and strings stay; enums give their value; paths their
string; mappings become dicts with string keys; lists, tuples and sets become lists
(sets sorted, so that a record is the same in every process); 0-d arrays and tensors give
their item, 1-d ones their list. Anything else goes to ``unknown(value, where)``: by
default its ``str``; the YAML writer refuses it instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

__all__ = ["plain"]


def plain(value: Any, where: str = "", unknown: Callable[[Any, str], Any] = lambda v, _: str(v)) -> Any:
    """``value`` as plain data; ``where`` names its place (``nodes.rx.params.eps``) for ``unknown``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return plain(value.value, where, unknown)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}.{k}" if where else str(k), unknown) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        value = sorted(value, key=str)
    if isinstance(value, list | tuple):
        return [plain(v, f"{where}[{i}]", unknown) for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return plain(value.item(), where, unknown)
    if hasattr(value, "tolist") and getattr(value, "ndim", 2) <= 1:
        return plain(value.tolist(), where, unknown)
    return unknown(value, where)
