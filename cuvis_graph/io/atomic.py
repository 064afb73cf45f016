"""Atomic files: a file cuvis-graph writes holds its old content or its new content, never half.

Every writer goes through :func:`atomic_path` (or its shorthands :func:`atomic_write`,
:func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`):

1. the content is written to a temporary sibling ``.<name>.tmp-<pid>-<random>`` in the
   target's folder (the same file system, so the rename below is atomic);
2. the temporary file is flushed and ``fsync``-ed (its bytes are on disk before its name is);
3. it is renamed onto the target with ``os.replace``.

A kill, a full disk or an exception at any step leaves the previous file untouched (or no
file), and the temporary file is removed on every failure that lets the process run on.
A reader opening the target at any instant sees one complete version, never a partial one.

Folders replaced whole (a saved model, a prediction folder) are built in a
:func:`temporary_sibling` folder whose files are written with :func:`write_synced`, then
swapped in by :func:`cuvis_graph.io.output_paths.replace_dir`. Appending logs
(``metrics.jsonl``, ``training.log``) are not replaced and are written in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "temporary_sibling",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "write_synced",
    "fsync_file",
]


def temporary_sibling(target: str | os.PathLike, kind: str = "tmp", suffix: str = "") -> Path:
    """``.<name>.<kind>-<pid>-<random><suffix>`` next to ``target`` (not created).

    The leading dot hides it from listings; ``<pid>`` names the writer; the random part
    keeps two threads or processes writing the same target apart."""
    target = Path(target)
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s content to disk (for a file a library wrote by name)."""
    with open(path, "r+b") as fh:
        os.fsync(fh.fileno())


def write_synced(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` and ``fsync`` it, without a rename: for files inside a
    temporary folder that is put in place whole afterwards."""
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary sibling path for a writer that needs a file name (``savefig``, ONNX export);
    when the block ends without an exception the file is fsynced and renamed onto ``path``.

    The parent folder is created if needed. ``suffix`` ends the temporary name, for writers
    that choose a format by extension. On any exception (including in the rename) the
    temporary file is removed and ``path`` is left as it was::

        with atomic_path("model.onnx", suffix=".onnx") as tmp:
            torch.onnx.export(module, args, str(tmp))
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target, suffix=suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # gone after a successful rename; left by a failure otherwise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a binary file handle of a temporary sibling, then put it in place
    (:func:`atomic_path`); returns ``path``. E.g. ``atomic_write(p, lambda fh: np.save(fh, a))``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write` of ``data`` as strict JSON (NaN/Inf refused with ``ValueError``,
    before anything is written; objects JSON cannot hold as their ``str``), ending in a newline."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str, allow_nan=False) + "\n")
