"""A pipeline file composed by Hydra (config groups beside the file, overrides), with its
errors named the way the rest of the pipeline reader names them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cuvis_graph.errors import Problem
from cuvis_graph.io.spec.schema import SpecError

__all__ = ["hydra_compose"]

#: The shipped pipelines (with their config groups) in a source checkout; absent in a wheel.
SHIPPED_PIPELINES = Path(__file__).resolve().parents[3] / "pipelines"


def hydra_compose(path: Path, overrides: list[str], source: str) -> Any:
    """Compose ``path`` with ``overrides`` (Hydra's config-group syntax); :class:`SpecError` naming
    ``defaults`` (or ``overrides``) when Hydra refuses."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent.resolve()), version_base=None, job_name="cuvis_graph"):
            return compose(config_name=path.stem, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        text = str(exc).split("Config search path:")[0].strip()
        where = "overrides" if overrides else "defaults"
        raise SpecError(source, [Problem(where, text + _missing_group_hint(path, text))]) from None
    finally:
        GlobalHydra.instance().clear()


def _missing_group_hint(path: Path, text: str) -> str:
    """For ``Could not find 'training/default'`` where the pipeline's folder has no ``training/``
    (a shipped pipeline copied elsewhere): where config groups are read from, and what to do."""
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing is None or (path.parent / missing.group(1)).is_dir():
        return ""
    group, option = missing.groups()
    folder = path.parent.resolve()
    hint = (f" (config groups are read from the pipeline's own folder, and {folder / group} does not exist: "
            f"put {group}/{option}.yaml there")
    if (SHIPPED_PIPELINES / group / f"{option}.yaml").is_file() and folder != SHIPPED_PIPELINES:
        hint += f", e.g. copy the folders training/ and data/ of {SHIPPED_PIPELINES} beside it"
    return hint + ", or start from a run's pipeline.yaml, which is resolved and has no defaults list)"
