"""The colormap names a heatmap accepts without importing matplotlib.

``BUILTIN_COLORMAPS``: the colormaps every supported matplotlib (>= 3.7) registers, each
also reversed (``<name>_r``). A name among them is accepted as it is; any other name
(a newer builtin, a typo, a colormap registered by the user) is looked up in matplotlib's
registry, which imports matplotlib.
"""

from __future__ import annotations

__all__ = ["BUILTIN_COLORMAPS", "check_colormap"]

_FORWARD = (
    "Accent", "Blues", "BrBG", "BuGn", "BuPu", "CMRmap", "Dark2", "GnBu", "Greens", "Greys", "OrRd",
    "Oranges", "PRGn", "Paired", "Pastel1", "Pastel2", "PiYG", "PuBu", "PuBuGn", "PuOr", "PuRd",
    "Purples", "RdBu", "RdGy", "RdPu", "RdYlBu", "RdYlGn", "Reds", "Set1", "Set2", "Set3",
    "Spectral", "Wistia", "YlGn", "YlGnBu", "YlOrBr", "YlOrRd", "afmhot", "autumn", "binary",
    "bone", "brg", "bwr", "cividis", "cool", "coolwarm", "copper", "cubehelix", "flag",
    "gist_earth", "gist_gray", "gist_heat", "gist_ncar", "gist_rainbow", "gist_stern", "gist_yarg",
    "gnuplot", "gnuplot2", "gray", "hot", "hsv", "inferno", "jet", "magma", "nipy_spectral",
    "ocean", "pink", "plasma", "prism", "rainbow", "seismic", "spring", "summer", "tab10", "tab20",
    "tab20b", "tab20c", "terrain", "turbo", "twilight", "twilight_shifted", "viridis", "winter",
)

BUILTIN_COLORMAPS: frozenset[str] = frozenset(_FORWARD) | frozenset(f"{name}_r" for name in _FORWARD)


def check_colormap(name: object, where: str = "cmap") -> str:
    """``name`` when it names a matplotlib colormap, else ``ValueError`` naming ``where``."""
    if isinstance(name, str) and name in BUILTIN_COLORMAPS:
        return name
    from matplotlib import colormaps

    if not isinstance(name, str) or name not in colormaps:
        raise ValueError(f"{where}: unknown matplotlib colormap {name!r}")
    return name
