"""Pipeline YAML <-> :class:`~cuvis_graph.core.graph.Graph`.

A pipeline file::

    defaults:                 # Hydra config groups under the file's folder (optional)
      - data: synthetic
      - training: default
      - _self_
    name: selector_rx
    nodes:                    # name -> {type | _target_, params, parent | parents}
      norm: {type: MinMaxNormalizer}
      rx:   {type: RXGlobal, params: {eps: 1.0e-9}, parent: norm}
    leaves:                   # name -> {type, params, parent}
      metrics: {type: AnomalyDetectionMetrics, params: {from_logits: false}, parent: rx}
    monitors:                 # name -> {type, params}
      files: {type: FileMonitor, params: {root: runs/files}}
    data: {type: SyntheticHSIDataModule, params: {n_train: 8}}   # default: synthetic scenes
    training: {trainer: {max_epochs: 0}}                          # TrainingConfig fields

``parent`` is a node name, ``"name.port"``, ``"batch.<key>"``, a list of those (the
input ports in order, or all into a variadic port), or a mapping ``port -> parent(s)``.

Loading goes: YAML syntax and duplicate keys (a strict pass over the file, with line
numbers) -> Hydra composition (config groups, command-line overrides; an override of a
key the file does not spell out is accepted when the schema knows it; ``trainer.*``,
``optimizer.*``... stand for ``training.trainer.*``...) -> the pydantic
schema -> types through the registry (:mod:`cuvis_graph.core.registry`, never an import of a
module the YAML names) -> constructor parameters against each class's signature and type
hints -> objects -> :meth:`Graph.compile` against the datamodule's declared spec. Every
problem found at one stage is reported together in one :class:`SpecError`, each naming
its YAML path (``nodes.rx.params.eps: Input should be a valid number``) with a "did you
mean" hint for names.

The modules, one job each: :mod:`~cuvis_graph.io.spec.schema` (the pydantic schema and
:class:`SpecError`), :mod:`~cuvis_graph.io.spec.composition` (strict YAML reading,
overrides, sweeps, Hydra composition), :mod:`~cuvis_graph.io.spec.parameters` (constructor
parameters against signatures and type hints), :mod:`~cuvis_graph.io.spec.factory` (the
objects and the graph) and :mod:`~cuvis_graph.io.spec.writer` (a graph back to YAML).
"""

from cuvis_graph.io.spec.composition import (
    MAX_SWEEP_JOBS,
    expand_sweeps,
    load_config,
    read_pipeline_file,
    read_yaml,
)
from cuvis_graph.io.spec.factory import (
    Pipeline,
    build_pipeline,
    graph_from_yaml,
    load_pipeline,
    parse_spec,
)
from cuvis_graph.io.spec.parameters import class_parameters, parameter_types
from cuvis_graph.io.spec.schema import ComponentSpec, LeafSpec, NodeSpec, PipelineSpec, SpecError
from cuvis_graph.io.spec.writer import graph_spec, graph_to_yaml

__all__ = [
    "SpecError",
    "PipelineSpec",
    "NodeSpec",
    "LeafSpec",
    "ComponentSpec",
    "Pipeline",
    "load_pipeline",
    "load_config",
    "build_pipeline",
    "parse_spec",
    "graph_from_yaml",
    "graph_spec",
    "graph_to_yaml",
    "expand_sweeps",
    "read_yaml",
    "read_pipeline_file",
    "class_parameters",
    "parameter_types",
    "MAX_SWEEP_JOBS",
]
