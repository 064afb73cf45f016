"""Class flags whose value on an instance follows from its constructor arguments.

The compiler, the training and the catalog read a node's or a leaf's conventions as class
attributes (``Node.statistical``, ``LeafNode.needs_labels``...). When a flag depends on how
the object was built (a normalizer that scales each batch by its own min/max is not
statistical), the class declares it with :class:`computed_flag` instead of assigning it on
the instance::

    class MinMaxNormalizer(Node):
        @computed_flag(default=True)
        def statistical(self) -> bool:
            return self.use_running_stats

``MinMaxNormalizer.statistical`` is the ``default`` (what the catalog lists, the value for
the default arguments); ``node.statistical`` calls the function. Assigning the flag on an
instance raises: the value has one source, the constructor arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["computed_flag"]

T = TypeVar("T")


class computed_flag(Generic[T]):  # noqa: N801 - used as a decorator, like ``property``
    """A read-only flag: ``default`` on the class, ``compute(instance)`` on an instance."""

    def __init__(self, default: T) -> None:
        self.default = default
        self.compute: Callable[[Any], T] | None = None
        self.name = ""

    def __call__(self, compute: Callable[[Any], T]) -> computed_flag[T]:
        self.compute = compute
        self.__doc__ = compute.__doc__
        return self

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> T:
        if instance is None or self.compute is None:
            return self.default
        return self.compute(instance)

    def __set__(self, instance: Any, value: Any) -> None:
        raise AttributeError(f"{type(instance).__name__}.{self.name} follows from the constructor arguments "
                             "and cannot be set on an instance")
