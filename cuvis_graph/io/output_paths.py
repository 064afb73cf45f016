"""Where outputs may go: folders replaced whole, no writes through planted links or into a model.

Every command that writes a folder (``graph.save``, ``predict --out``) or a file next to
user data (``export -o``) goes through these functions:

* :func:`replace_dir` puts a complete temporary sibling folder
  (:func:`~cuvis_graph.io.atomic.temporary_sibling`) in place of the target.
  On Linux the two are swapped in one ``renameat2(RENAME_EXCHANGE)`` call, so at every
  instant the path holds the old folder or the new one. Where that call is unavailable
  the old folder is first renamed to ``.<name>.old-<tag>``; a kill between the two renames
  leaves the path missing, and :func:`interrupted_replacement` names the complete
  siblings so that loading explains how to recover.
* :func:`refuse_link` refuses a target that is a symbolic link (writing would land in
  the link's target, outside the folder the user named).
* :func:`refuse_inside_model` refuses a path in (or equal to) a saved model folder, so
  that no output ever overwrites a model's files.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from pathlib import Path

from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.atomic import temporary_sibling

__all__ = ["OutputPathError", "replace_dir", "interrupted_replacement", "refuse_link",
           "refuse_inside_model", "model_folder_of"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class OutputPathError(CuvisGraphError):
    """An output path that would write through a link, into a model, or over a foreign file."""


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directory entries ``a`` and ``b`` atomically; ``False`` where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(new: Path, target: Path) -> Path:
    """Put the complete folder ``new`` at ``target`` (a sibling), replacing what is there."""
    if not os.path.lexists(target):
        os.replace(new, target)
    elif _exchange(new, target):  # ``new`` now holds the previous folder
        shutil.rmtree(new, ignore_errors=True)
    else:
        old = temporary_sibling(target, "old")
        os.replace(target, old)
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    return target


def interrupted_replacement(target: Path) -> str | None:
    """A sentence naming the siblings an interrupted :func:`replace_dir` left, or ``None``."""
    if not target.parent.is_dir():
        return None
    old = sorted(p.name for p in target.parent.glob(f".{target.name}.old-*") if p.is_dir())
    new = sorted(p.name for p in target.parent.glob(f".{target.name}.tmp-*") if p.is_dir())
    if not old and not new:
        return None
    parts = [f"the previous folder is kept as {', '.join(old)}"] if old else []
    parts += [f"the unfinished new one is {', '.join(new)}"] if new else []
    return (f"a replacement of {target.name} was interrupted: {'; '.join(parts)} (in {target.parent}); "
            f"rename the one to keep to {target.name}")


def refuse_link(path: Path, what: str) -> None:
    """Raise when ``path`` itself is a symbolic link (``what`` names it for the message)."""
    if path.is_symlink():
        raise OutputPathError(f"{what} {path}: is a symbolic link (to {os.readlink(path)}); writing would land "
                              "outside the folder you named; give a real path")


def _is_model_folder(folder: Path) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_bytes()[:1_000_000]).get("format") == "cuvis-graph-model"
    except (OSError, ValueError, AttributeError):
        return False


def model_folder_of(path: Path) -> Path | None:
    """The saved model folder that ``path`` (links resolved) is, or lies in; ``None`` if none."""
    resolved = Path(os.path.realpath(path))
    for folder in (resolved, *resolved.parents):
        if _is_model_folder(folder):
            return folder
    return None


def refuse_inside_model(path: Path, what: str) -> None:
    """Raise when ``path`` (links resolved) is or lies inside a saved model folder."""
    model = model_folder_of(path)
    if model is not None:
        raise OutputPathError(f"{what} {path}: lies in the saved model folder {model}, whose files are never "
                              "overwritten; choose a path outside it")


def check_output_file(path: str | os.PathLike, option: str, reads: tuple[Path, ...] = ()) -> Path:
    """The file an ``-o``/``--output`` option names, checked before anything is drawn or written:
    not empty, not a folder, not a link, not one of the files the command ``reads``, not inside a
    saved model; a missing parent folder is created."""
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError(f"{option}: an empty path; give a file name")
    target = Path(text).expanduser()
    refuse_link(target, option)
    if target.is_dir():
        raise OutputPathError(f"{option} {target}: is a folder; give a file name inside it")
    for source in reads:
        if target.exists() and source.exists() and target.samefile(source):
            raise OutputPathError(f"{option} {target}: is the file this command reads; writing would destroy it")
    refuse_inside_model(target, option)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{option} {target}: cannot create its folder ({exc.strerror})") from None
    return target
