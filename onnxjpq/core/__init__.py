"""Pure numpy math: quantization, statistics, storage accounting, the plan (no onnx, no torch)."""
