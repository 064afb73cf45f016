"""The training layer: configuration, the Lightning module, stages, callbacks and checkpoints."""
