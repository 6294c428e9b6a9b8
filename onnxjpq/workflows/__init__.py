"""Workflows that compose the pipeline: a file in any mode, calibrated budgets, accuracy search,
activation quantization, sensitivity, sweeps, evaluation, the demo."""
