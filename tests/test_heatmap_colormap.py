"""The heatmap's colormap is checked on construction: builtin names from a static list (no
matplotlib import), any other name against matplotlib's registry."""

from __future__ import annotations

import pytest
from cuvis_graph.nodes import AnomalyHeatmap
from cuvis_graph.nodes.visualizations._colormaps import BUILTIN_COLORMAPS
from matplotlib import colormaps
from matplotlib.colors import ListedColormap


def test_every_listed_builtin_is_a_matplotlib_colormap() -> None:
    assert len(BUILTIN_COLORMAPS) > 150
    assert set(colormaps) >= BUILTIN_COLORMAPS
    assert all(f"{name}_r" in BUILTIN_COLORMAPS for name in BUILTIN_COLORMAPS if not name.endswith("_r"))


@pytest.mark.parametrize("cmap", ["nope", "Inferno", "viridis_rr", "", 3, None])
def test_an_unknown_colormap_is_refused_on_construction_naming_the_parameter(cmap) -> None:
    with pytest.raises(ValueError, match=r"^cmap: unknown matplotlib colormap"):
        AnomalyHeatmap(cmap=cmap)


def test_a_colormap_missing_from_the_list_is_looked_up_in_matplotlib() -> None:
    name = "cg_test_two_tone"
    assert name not in BUILTIN_COLORMAPS
    with pytest.raises(ValueError, match=name):
        AnomalyHeatmap(cmap=name)
    colormaps.register(ListedColormap(["black", "white"], name=name))
    try:
        assert AnomalyHeatmap(cmap=name).cmap == name
    finally:
        colormaps.unregister(name)
