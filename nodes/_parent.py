"""Leaves that read attributes of their parent node (components, channel weights, ...)."""

from __future__ import annotations

from typing import Any

from cuvis_graph.errors import CuvisGraphError

__all__ = ["ParentBound"]


class ParentBound:
    """Mixin for leaves: remember the parent node (bound after a successful compile, by
    :func:`~cuvis_graph.core.compiler.build_plan`; compiling alone binds nothing).

    Losses and metrics receive only the parent's *output*; leaves that need the parent
    itself (e.g. a PCA's ``components``) get it here. The node is held in a plain tuple,
    not as a submodule: it is not part of the leaf's state dict or parameters, and it keeps
    its identity when the compiled module is pickled or deep-copied (DDP spawn). Outside a
    graph, call :meth:`bind_parent` directly.
    """

    _parent_box: tuple[Any, ...] = ()

    def bind_parent(self, parent: Any) -> None:
        """Use ``parent`` as this leaf's parent node."""
        self._parent_box = (parent,)

    @property
    def parent(self) -> Any:
        """The bound parent node."""
        if not self._parent_box:
            raise CuvisGraphError(f"leaf '{getattr(self, 'name', None)}' ({type(self).__name__}) has no parent "
                                  "node: add it to a graph and compile it (graph.compile / train), or call bind_parent(node)")
        return self._parent_box[0]
