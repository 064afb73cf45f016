"""The core layer: graph, nodes and leaves, compiler, executor and statistical fitting.

Imports torch only; nothing here imports Lightning, TensorBoard, W&B or matplotlib.
"""
