"""The pipeline schema (pydantic): what a pipeline file may hold, and :class:`SpecError`."""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cuvis_graph.core.names import shorten
from cuvis_graph.errors import ConfigError, Problem
from cuvis_graph.train.config import TrainingConfig

if typing.TYPE_CHECKING:
    pass

DEFAULT_DATA = "SyntheticHSIDataModule"
SECTION_KIND = {"nodes": "node", "leaves": "leaf", "monitors": "monitor", "data": "data"}
KIND_SECTION = {v: k for k, v in SECTION_KIND.items()}


class SpecError(ConfigError):
    """Problems in a pipeline definition, each naming its YAML path; reported together."""

    def __init__(self, source: str, problems: Sequence[Problem], causes: Sequence[BaseException] = ()) -> None:
        self.source = source
        self.problems = list(problems)
        self.causes = list(causes)
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            body = "\n".join(f"  {i}. {p}" for i, p in enumerate(self.problems, 1))
            message = f"{source}: {len(self.problems)} problems found\n{body}"
        super().__init__(message)


# -- the schema ------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"params must be a mapping of parameter names to values, got {type(value).__name__}")
    return dict(value)


class ComponentSpec(_Strict):
    """A class by registered name (``type``) or dotted path (``_target_``) with its parameters."""

    type: str | None = None
    target: str | None = Field(None, alias="_target_")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> dict[str, Any]:
        return _check_params(v)

    @property
    def type_name(self) -> str | None:
        return self.target or self.type


class NodeSpec(ComponentSpec):
    """A processing node: its class, parameters and parent(s)."""

    parent: Any = None
    parents: Any = None


class LeafSpec(ComponentSpec):
    """A loss, metric or visualization leaf on one parent (``"node"`` or ``"node.port"``)."""

    parent: str


class DataComponentSpec(ComponentSpec):
    type: str | None = DEFAULT_DATA


class PipelineSpec(_Strict):
    """The whole pipeline file (after Hydra composition)."""

    name: str = Field("pipeline", min_length=1)
    nodes: dict[str, NodeSpec] = Field(min_length=1)
    leaves: dict[str, LeafSpec] = Field(default_factory=dict)
    monitors: dict[str, ComponentSpec] = Field(default_factory=dict)
    data: DataComponentSpec = Field(default_factory=DataComponentSpec)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    allow_modules: list[str] = Field(default_factory=list)

    @field_validator("leaves", "monitors", "data", "training", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("allow_modules", mode="before")
    @classmethod
    def _not_from_a_file(cls, v: Any) -> Any:
        if v:
            shown = shorten(v[0] if isinstance(v, list) and v else v)
            raise ValueError(f"a pipeline cannot widen its own allowlist; allow a module where you run it: "
                             f"'--allow-module {shown}' on the command line, allow_modules=['{shown}'] in "
                             f"Python, or register its classes (@cuvis_graph.register in a --plugin file, or an entry point)")
        return []
