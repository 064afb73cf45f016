"""Label nodes: map dataset class ids to the labels losses and metrics consume."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cuvis_graph.core.node import Node, PortSpec
from cuvis_graph.core.registry import register

__all__ = ["BinaryLabelMapper"]


@register
class BinaryLabelMapper(Node):
    """Class-id map to binary anomaly labels: ``y = 0 if id in normal_class_ids else 1``.

    ``mask [B,H,W]`` (int64 class ids, batch key ``"mask"``) -> ``labels [B,H,W]`` (int64,
    0 = normal, 1 = anomalous).

    ``provides_labels = True``: a leaf that needs labels and leaves ``label_source=None``
    is fed these mapped labels (as ``batch["target"]``), never the raw class ids; the
    compiler checks that the batch carries ``"mask"`` for such leaves. The input port is
    optional so that inference on a bare cube still runs (the output is then ``None``).

    Args:
        normal_class_ids: ids of the background/normal classes (e.g. ``[0]``).
    """

    INPUTS = {"mask": PortSpec(("B", "H", "W"), dtype=torch.int64, optional=True, batch_key="mask",
                               description="class ids")}
    OUTPUTS = {"labels": PortSpec(("B", "H", "W"), dtype=torch.int64, description="0 normal / 1 anomalous")}
    provides_labels = True

    def __init__(self, normal_class_ids: Sequence[int] = (0,), name: str | None = None) -> None:
        super().__init__(name=name)
        ids = [int(i) for i in normal_class_ids]
        if not ids:
            raise ValueError("normal_class_ids must name at least one class")
        self.normal_class_ids = ids
        self.register_buffer("normal_ids", torch.tensor(ids, dtype=torch.int64), persistent=False)

    def forward(self, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        if mask is None:
            return None
        normal = torch.isin(mask.long(), self.normal_ids.to(mask.device))
        return (~normal).to(torch.int64)
