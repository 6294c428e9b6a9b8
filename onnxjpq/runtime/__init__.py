"""onnxruntime sessions, datasets and batches, capture of layer inputs."""
