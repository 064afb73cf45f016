"""The ``cuvis-graph`` command line."""

from cuvis_graph.cli.app import main

__all__ = ["main"]
