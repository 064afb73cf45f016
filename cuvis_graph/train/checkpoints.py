"""Reading training checkpoints safely: the one loader behind resume and Lightning's restore.

A checkpoint is loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only, never objects that unpickle code. A file that fails that (truncated by a
full disk, not a checkpoint, or holding such objects) is refused with
:class:`CheckpointError` naming the file and what was found. Loading without the
restriction is never offered: a checkpoint is a file the user reads, and it must not be able
to run code (design principle 12).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

from cuvis_graph.errors import CuvisGraphError

__all__ = ["CheckpointError", "load_checkpoint"]


class CheckpointError(CuvisGraphError):
    """A checkpoint file that cannot be loaded as weights only."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict in ``path`` (``weights_only=True``), or :class:`CheckpointError`."""
    import torch

    path = Path(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"an object of type {found.group(1)}" if found else "objects other than tensors and plain values"
        raise CheckpointError(f"checkpoint {path}: holds {what}, which a safe (weights-only) load refuses; "
                              "resume from a checkpoint written by cuvis-graph (checkpoints/last.ckpt or "
                              "best.ckpt) or start a new run") from None
    except (RuntimeError, EOFError, OSError, ValueError):
        size = path.stat().st_size if path.is_file() else 0
        raise CheckpointError(f"checkpoint {path}: not a complete checkpoint file ({size} bytes: truncated, or "
                              "not written by torch.save); resume from another checkpoint of the run or start a "
                              "new run") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path}: holds a {type(data).__name__}, not a checkpoint dict; resume "
                              "from a checkpoint written by cuvis-graph")
    return data
