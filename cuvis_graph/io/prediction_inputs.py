"""The inputs of file prediction: which cube files, and the output folder name of each.

Files are taken as given; a folder gives its cube files
(:func:`~cuvis_graph.data.readers.list_cubes`), those of its sub-folders only with
``recursive=True``. Each file gets a unique result folder name below the output folder:
its sub-folders below the folder input, then its stem (``sub/b`` for ``scenes/sub/b.npy``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["expand_inputs", "expand_named", "cubes_in_subfolders", "output_names"]


def expand_inputs(inputs: Iterable[str | os.PathLike], recursive: bool = False) -> list[tuple[Path, str | None]]:
    """``[(file, error or None)]``: files as given, folders expanded with ``list_cubes``
    (``recursive``: with the cube files of their sub-folders)."""
    return [(path, problem) for path, problem, _ in expand_named(inputs, recursive)]


def expand_named(inputs: Iterable[str | os.PathLike], recursive: bool) -> list[tuple[Path, str | None, Path]]:
    """:func:`expand_inputs` with each file's name below its folder input (``sub/b.npy``;
    the file name for a file given)."""
    from cuvis_graph.data.readers import list_cubes

    out: list[tuple[Path, str | None, Path]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = list_cubes(path, recursive=recursive)
            if not found:
                out.append((path, f"{path}: folder holds no cube files", Path(path.name)))
            out += [(p, None, p.relative_to(path)) for p in found]
        elif not path.exists():
            out.append((path, f"{path}: no such file or folder", Path(path.name)))
        else:
            out.append((path, None, Path(path.name)))
    return out


def cubes_in_subfolders(inputs: Iterable[str | os.PathLike]) -> int:
    """How many cube files lie in sub-folders of the folder ``inputs`` (what ``recursive`` adds)."""
    from cuvis_graph.data.readers import list_cubes

    folders = [Path(item).expanduser() for item in inputs if Path(item).expanduser().is_dir()]
    return sum(len(list_cubes(f, recursive=True)) - len(list_cubes(f)) for f in folders)


def output_names(paths: Sequence[Path]) -> list[str]:
    """A unique output folder name per input (a name below its folder input, see :func:`expand_named`):
    its sub-folders, then the stem, ``<stem>_<suffix>`` or ``_<n>`` (``sub/b``); one name is never
    a folder above another's results."""
    names: list[str] = []
    taken: set[str] = set()
    above: set[str] = set()  # folders that hold results below them

    def free(name: str) -> bool:
        parents = name.split("/")[:-1]
        return name not in taken | above and not any("/".join(parents[:i]) in taken
                                                      for i in range(1, len(parents) + 1))

    for path in paths:
        folder = "".join(f"{part}/" for part in Path(path).parent.parts if part not in ("", "."))
        stem = path.name[: -len(path.suffix)] if path.suffix else path.name
        candidate = folder + (stem or "cube")
        if not free(candidate):
            candidate = f"{folder}{stem}_{path.suffix.lstrip('.')}" if path.suffix else candidate
        k = 1
        base = candidate
        while not free(candidate):
            candidate = f"{base}_{k}"
            k += 1
        taken.add(candidate)
        above.update("/".join(candidate.split("/")[:i]) for i in range(1, candidate.count("/") + 1))
        names.append(candidate)
    return names
