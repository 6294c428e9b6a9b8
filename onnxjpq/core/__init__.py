"""Pure numpy: quantization, statistics and layer-input math (no onnx, no torch)."""
