"""ONNX in, facts out: file I/O, opsets, the per-op registry, layer finding, MACs."""
