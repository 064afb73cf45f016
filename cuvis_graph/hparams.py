"""Automatic recording of constructor arguments, so nodes and leaves can be written to YAML.

A class that inherits :class:`RecordsInit` gets ``self._hparams``: the arguments of its
outermost ``__init__`` call (defaults filled in, ``self`` and ``name`` excluded).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["RecordsInit"]


class RecordsInit:
    """Mixin: record ``__init__`` arguments in ``self._hparams``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__dict__["__init__"]
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            outermost = not hasattr(self, "_hparams_depth") or self._hparams_depth == 0
            object.__setattr__(self, "_hparams_depth", getattr(self, "_hparams_depth", 0) + 1)
            try:
                original(self, *args, **kw)
            finally:
                object.__setattr__(self, "_hparams_depth", self._hparams_depth - 1)
            if outermost:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                params = {k: v for k, v in bound.arguments.items() if k not in ("self", "name")}
                for k, p in signature.parameters.items():
                    if p.kind is inspect.Parameter.VAR_KEYWORD:
                        params.update(params.pop(k, {}))
                    elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                        params.pop(k, None)
                object.__setattr__(self, "_hparams", params)

        cls.__init__ = __init__
