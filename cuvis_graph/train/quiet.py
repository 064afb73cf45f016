"""Lightning's notices that say nothing about the user's pipeline, silenced for one call.

``with quiet_lightning(): trainer.fit(...)`` ignores those warnings and lowers Lightning's
info loggers to WARNING inside the block only; on leaving it the process's warning filters,
logger levels and ``POSSIBLE_USER_WARNINGS`` are what they were before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

__all__ = ["quiet_lightning", "QUIET_PATTERNS", "QUIET_LOGGERS"]

#: warning messages (regular expressions) ignored inside :func:`quiet_lightning`
QUIET_PATTERNS = (
    ".*does not have many workers.*", ".*overridden `transfer_batch_to_device`.*",
    ".*smaller than the logging interval.*", ".*LeafSpec.*is deprecated.*",
    ".*GPU available but not used.*", ".*`training_step` returned `None`.*",
    ".*module\\(s\\) in eval mode at the start of training.*",
    ".*when logging on epoch level in distributed setting.*",
    ".*configure_optimizers` returned `None`.*",  # statistics-only fits (e.g. under DDP)
)

#: Lightning loggers lowered to WARNING inside :func:`quiet_lightning`
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.rank_zero")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's notices inside the block; everything is restored on exit."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    previous_env = os.environ.get("POSSIBLE_USER_WARNINGS")
    with warnings.catch_warnings():
        os.environ.setdefault("POSSIBLE_USER_WARNINGS", "off")  # also read by DDP processes started inside
        for pattern in QUIET_PATTERNS:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            if previous_env is None:
                os.environ.pop("POSSIBLE_USER_WARNINGS", None)
