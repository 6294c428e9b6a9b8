"""Fine-tuning in PyTorch (imports torch; `import onnxjpq` never imports this package).

The ONNX graph itself is executed by `bridge.OnnxModule` with torch ops, its
float initializers as parameters under their ONNX names; after training the
new values are written back into the same graph and the post-training
rewrite applies the plan. No export round trip, so nothing about the graph
but the weight values changes.
"""
