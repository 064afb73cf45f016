"""The file layer: YAML pipelines, saved models, runs, prediction on files and ONNX export."""
