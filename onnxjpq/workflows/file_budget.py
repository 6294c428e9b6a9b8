"""`--size-kb` for the packed format: the budget is the file, not only its weights.

The solver budgets the weights' storage bits; the file also holds what stays
uncompressed (biases, norms, the graph) and the decoder. So the weights get the
budget less those bytes, found by solving again: each try shrinks the weights'
budget by what the last file overshot (a few percent more), until the file fits.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import BudgetUnreachable, OptionError
from ..methods.annc import AnncConfig

TRIES = 5
SHRINK = 1.05  # each try takes the overshoot, and this much more, from the weights


def within_file_size(solve, config: AnncConfig):
    """(model, report) of `solve(config)` whose serialized model is at most `config.size_kb` KB;
    an OptionError naming the smallest file the solver can reach when none is."""
    target = config.size_kb * 1024
    budget, tries = config, 0
    while tries < TRIES:
        tries += 1
        try:
            out, report = solve(budget)
        except BudgetUnreachable as unreachable:
            raise OptionError(_smallest(solve, config, unreachable)) from None
        size = out.ByteSize()
        if size <= target:
            report["settings"].setdefault("notes", []).append(
                f"--size-kb {config.size_kb:g} budgets the packed file: {size / 1024:.1f} KB written, "
                f"the weights' storage {budget.size_kb:.1f} KB of it ({tries} solve{'s' * (tries > 1)})")
            report["totals"]["size_kb_budget"] = config.size_kb
            return out, report
        weights_kb = budget.size_kb - SHRINK * (size - target) / 1024
        budget = replace(config, size_kb=max(weights_kb, 1e-3))  # none left: the solver names its smallest
    raise OptionError(f"--size-kb {config.size_kb:g}: no packed file within it after {tries} solves "
                      f"(the last was {size / 1024:.1f} KB); ask for more, or use --rate")


def _smallest(solve, config: AnncConfig, unreachable: BudgetUnreachable) -> str:
    """The error for a budget below the smallest allocation: the file the allocation just above
    it writes (the solver keeps a little of a budget back, so a few are tried)."""
    for margin in (1.01, 1.05, 1.2, 1.5):
        try:
            out, _ = solve(replace(config, size_kb=unreachable.need_bits / 8192 * margin))
        except BudgetUnreachable:
            continue
        return (f"--size-kb {config.size_kb:g} is out of reach: the smallest packed file onnxjpq can write "
                f"is about {out.ByteSize() / 1024:.1f} KB (its weights {unreachable.need_bits / 8192:.1f} KB)")
    return f"--size-kb {config.size_kb:g} is out of reach: {unreachable}"
