"""Option groups shared by the verbs: the weight selection and the compression mode."""

from __future__ import annotations


import click


from .common import split_commas


_SELECTION_OPTIONS = [
    click.option("--include", multiple=True, help="Compress only weights/nodes matching these globs."),
    click.option("--exclude", multiple=True, help="Leave weights/nodes matching these globs in float."),
    click.option("--keep", multiple=True, default=("auto",), show_default=True,
                 help="Keep these layers dense at 8 bits: 'first', 'last' or globs (comma-separated); "
                      "'auto' is first,last with --prune/--bits and none with a budget; 'none' keeps none."),
    click.option("--min-params", type=int, default=64, show_default=True,
                 help="Weights with fewer values stay float."),
    click.option("--embeddings", is_flag=True, help="Also compress float tables read by Gather (embeddings)."),
]


_DATA_AWARE_OPTIONS = [
    click.option("--solver", type=click.Choice(["gptq", "rtn"]), default=None,
                 help="With --calib: gptq (error compensation: GPTQ/SparseGPT, rounding for small layers) "
                      "or rtn (round to nearest on the grid of least output error, for comparison) "
                      "[default: gptq]."),
    click.option("--sequential/--independent", default=None,
                 help="With --calib: capture each layer's inputs from the model whose earlier layers are "
                      "already compressed (sequential, the default) or all from the fp32 model in one pass "
                      "(independent: faster, weaker at high rates)."),
]


def with_data_aware(func):
    for option in reversed(_DATA_AWARE_OPTIONS):
        func = option(func)
    return func


def data_aware_from(solver, sequential, calib):
    """The data-aware settings of --solver and --sequential/--independent (they need --calib)."""
    from ..errors import OptionError
    from ..workflows.data_aware import DataAwareConfig
    if calib is None:
        if solver is not None or sequential is not None:
            raise OptionError("--solver and --sequential/--independent set the data-aware solve: give --calib")
        return None
    return DataAwareConfig(solver=solver or "gptq", sequential=True if sequential is None else sequential)


def with_selection(func):
    for option in reversed(_SELECTION_OPTIONS):
        func = option(func)
    return func


def selection_from(include, exclude, keep, min_params, embeddings=False):
    from ..errors import OptionError
    from ..graph.layers import Selection
    if min_params < 0:
        raise OptionError(f"--min-params must be >= 0, got {min_params}")
    keep = tuple(k for k in split_commas(keep) if k != "none")
    return Selection(split_commas(include), split_commas(exclude), keep, min_params, embeddings)


def method_config(prune, bits, prune_mode, keep_survivors, rate, size_kb, min_bits, max_bits, pow2,
                   objective, max_drop, data_path, granularity="auto"):
    """The config of the one mode the options ask for: OPQ, budget, or accuracy search."""
    from ..errors import OptionError
    from ..methods.annc import AnncConfig
    from ..methods.opq import OpqConfig
    from ..workflows.search import SearchConfig

    modes = [name for name, given in (("--prune/--bits", prune is not None or bits is not None),
                                      ("--rate/--size-kb", rate is not None or size_kb is not None),
                                      ("--max-drop", max_drop is not None)) if given]
    if len(modes) > 1:
        raise OptionError(f"{' and '.join(modes)} are different modes: give one of them")
    if (max_drop is None) != (data_path is None):
        raise OptionError("--max-drop and --data go together")
    if max_drop is not None:
        budget = AnncConfig(rate=4.0, min_bits=min_bits, max_bits=max_bits, pow2=pow2, objective=objective,
                            granularity=granularity)
        return SearchConfig(max_drop=max_drop, data_path=data_path, budget=budget)
    if rate is not None or size_kb is not None:
        return AnncConfig(rate=rate, size_kb=size_kb, min_bits=min_bits, max_bits=max_bits, pow2=pow2,
                          objective=objective, granularity=granularity)
    return OpqConfig(prune=0.0 if prune is None else prune, bits=8.0 if bits is None else bits,
                     prune_mode=prune_mode, keep_survivors=keep_survivors, granularity=granularity)
