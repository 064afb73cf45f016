"""Leaves that read attributes of their parent node (components, channel weights, ...)."""

from __future__ import annotations

import weakref
from typing import Any

from cuvis_graph.errors import CuvisGraphError

__all__ = ["ParentBound"]


class ParentBound:
    """Mixin for leaves: remember the parent node the compiler validated the leaf against.

    Losses and metrics receive only the parent's *output*; leaves that need the parent
    itself (e.g. a PCA's ``components``) get it here. The reference is weak (the graph
    owns the node) and is not part of the leaf's state dict. Outside a graph, call
    :meth:`bind_parent` directly.
    """

    _parent_ref: Any = None

    def validate_parent(self, parent: Any) -> list[str]:
        problems = super().validate_parent(parent)  # type: ignore[misc]
        if not problems:
            self.bind_parent(parent)
        return problems

    def bind_parent(self, parent: Any) -> None:
        """Use ``parent`` as this leaf's parent node."""
        self._parent_ref = weakref.ref(parent)

    @property
    def parent(self) -> Any:
        """The bound parent node."""
        node = self._parent_ref() if self._parent_ref is not None else None
        if node is None:
            raise CuvisGraphError(f"leaf '{getattr(self, 'name', None)}' ({type(self).__name__}) has no parent "
                                  "node: add it to a graph and compile, or call bind_parent(node)")
        return node
