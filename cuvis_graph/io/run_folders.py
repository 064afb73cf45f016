"""Run folders: naming, creating and finding ``<root>/<pipeline>/<YYYYMMDD_HHMMSS_mmm>/``.

The pipeline name becomes a folder name with every character other than letters, digits,
``-``, ``_`` and ``.`` replaced by ``_``; a name that would leave the runs root is refused.
Two runs started in the same millisecond get consecutive stamps (``mkdir`` without
``exist_ok`` decides who has which). The stamp sorts by time, so the newest run is the
last name in sorted order.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from cuvis_graph.io.runs import RunRecordError

__all__ = ["new_run_dir", "new_sweep_dir", "make_run_folder", "make_named_run_folder", "find_latest_run",
           "safe_name", "resumable", "remove_unstarted_run"]


def safe_name(name: str) -> str:
    """``name`` as a folder name (``"graph"`` when nothing of it is left)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return safe if safe.strip(".") else "graph"


def new_run_dir(root: str | os.PathLike, pipeline: str, prefix: str = "") -> Path:
    """A new, empty ``<root>/<pipeline>/<prefix><YYYYMMDD_HHMMSS_mmm>/`` (created)."""
    root = Path(root)
    base = _inside(root, safe_name(pipeline))
    make_run_folder(base, root)
    stamp = _dt.datetime.now()
    while True:
        path = base / (prefix + stamp.strftime("%Y%m%d_%H%M%S_") + f"{stamp.microsecond // 1000:03d}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            stamp += _dt.timedelta(milliseconds=1)
        except OSError as exc:
            raise RunRecordError(f"runs root {root}: cannot create the run folder {path} ({exc.strerror}); "
                                 "pass --runs-dir (training.run.root) a writable folder") from None


def new_sweep_dir(root: str | os.PathLike, pipeline: str) -> Path:
    """A new ``<root>/<pipeline>/sweep_<stamp>/`` for the runs of one ``-m`` sweep."""
    return new_run_dir(root, pipeline, prefix="sweep_")


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refused unless it resolves to a folder inside ``root``."""
    path = root / name
    if path.resolve().parent != root.resolve():
        raise RunRecordError(f"pipeline name {name!r}: the run folder {path} would leave the runs root {root}; "
                             "rename the pipeline")
    return path


def make_run_folder(path: Path, root: Path) -> None:
    """``mkdir -p path``, with a message naming ``root`` (the runs root) when it fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunRecordError(f"runs root {root}: {path} or a folder above it is a file, not a folder; pass "
                             "--runs-dir (training.run.root) a folder") from None
    except OSError as exc:
        raise RunRecordError(f"runs root {root}: cannot create {path} ({exc.strerror}); pass --runs-dir "
                             "(training.run.root) a writable folder") from None


def make_named_run_folder(path: Path) -> None:
    """The run folder a user named (``--run-dir``, ``run_dir=``): created if missing; a folder
    already holding files is accepted only when it is a run (``run.json``), so that a run never
    writes its files (``config.yaml``, ``model/``, ...) among someone else's."""
    if path.exists() and not path.is_dir():
        raise RunRecordError(f"run folder {path}: is a file, not a folder; name a new or empty folder")
    if path.is_dir() and not (path / "run.json").is_file():
        entries = sorted(p.name for p in path.iterdir() if p.name != "lock" and not p.name.startswith("."))
        if entries:  # (a lock alone: a run whose first attempt is starting, or died starting)
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise RunRecordError(f"run folder {path}: holds files that are not a run's ({shown}); name a new or "
                                 "empty folder, or a run folder to train again")
    make_run_folder(path, path.parent)


def resumable(path: Path) -> bool:
    """A run with something to continue from: ``last.ckpt`` or a ``stage_state.json``."""
    return (path / "checkpoints" / "last.ckpt").is_file() or (path / "stage_state.json").is_file()


def find_latest_run(root: str | os.PathLike, pipeline: str, with_checkpoint: bool = True) -> Path | None:
    """Newest run directory of ``pipeline`` under ``root`` (a :func:`resumable` one if asked)."""
    base = Path(root) / safe_name(pipeline)
    if not base.is_dir():
        return None
    for path in sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        if not with_checkpoint or resumable(path):
            return path
    return None


def remove_unstarted_run(path: Path) -> bool:
    """Remove the run folder ``path``, made for an attempt that never started, if it is still
    empty; ``True`` if it was removed. A folder holding anything stays."""
    try:
        path.rmdir()  # only an empty folder
    except OSError:
        return False
    return True
