"""A grid of OPQ settings: compress at each (prune, bits), measure each against fp32, find the Pareto front.

Each grid point is compressed with `compress_file` and compared with the
fp32 model on the same data (`evaluate.compare`): top-1 accuracy when the
data has labels, else top-1 agreement with fp32, and the output SNR. Points
run in worker processes; the rows come back in grid order whatever the
order they finish in.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, OptionError
from ..runtime.sessions import cpu_cores

COLUMNS = ("prune", "bits", "prune_ratio", "avg_bits", "rate", "storage_rate", "bytes", "accuracy",
           "agreement", "snr_db", "model")


def default_jobs() -> int:
    return min(2, cpu_cores())


@dataclass(frozen=True)
class SweepConfig:
    """The grid (every prune ratio with every bit-width), the worker count, and the data options.

    plot_point: (prune, bits) of the point whose per-layer figure is drawn; by
    default the highest-rate point losing at most `plot_drop` points of the
    metric against fp32.
    """

    prunes: tuple[float, ...] = (0.0, 0.5, 0.8)
    bits: tuple[float, ...] = (8.0, 4.0, 3.0)
    jobs: int = 1
    batch: int = 64
    labels_key: str = "labels"
    plot_point: tuple[float, float] | None = None
    plot_drop: float = 1.0

    def __post_init__(self):
        from ..methods.opq import OpqConfig

        if not self.prunes or not self.bits:
            raise OptionError("the sweep needs at least one prune ratio and one bit-width")
        for prune in self.prunes:
            for bits in self.bits:
                OpqConfig(prune=prune, bits=bits)  # checks the ranges
        if len(set(self.prunes)) != len(self.prunes) or len(set(self.bits)) != len(self.bits):
            raise OptionError("the sweep's prune ratios and bit-widths must not repeat")
        if self.jobs < 1 or self.batch < 1:
            raise OptionError(f"--jobs and --batch must be >= 1, got {self.jobs} and {self.batch}")
        if self.plot_point is not None and tuple(self.plot_point) not in self.grid():
            raise OptionError(f"--plot-point {self.plot_point[0]:g},{self.plot_point[1]:g} is not on the grid")

    def grid(self) -> list[tuple[float, float]]:
        return [(p, b) for p in self.prunes for b in self.bits]


# ---------------------------------------------------------------- pure selection


def pareto_front(rates, scores) -> list[int]:
    """Indices of the points no other point beats on both rate and score, by increasing rate.

    >>> pareto_front([1, 2, 4, 8, 3], [99, 98.5, 98.6, 90, 97])
    [0, 2, 3]
    """
    order = sorted(range(len(rates)), key=lambda i: (-rates[i], -scores[i]))
    front, best = [], -np.inf
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return sorted(front, key=lambda i: rates[i])


def choose_point(rows: list[dict], reference: float, metric: str, max_drop: float) -> dict:
    """The highest-rate row within `max_drop` points of `reference`; else the best-scoring row.

    >>> rows = [{"rate": 4, "accuracy": 98.0}, {"rate": 16, "accuracy": 97.5}, {"rate": 40, "accuracy": 90.0}]
    >>> choose_point(rows, 98.2, "accuracy", 1.0)["rate"]
    16
    >>> choose_point(rows, 99.9, "accuracy", 1.0)["rate"]
    4
    """
    within = [r for r in rows if r[metric] >= reference - max_drop]
    if within:
        return max(within, key=lambda r: (r["rate"], r[metric]))
    return max(rows, key=lambda r: (r[metric], r["rate"]))


def parse_point(text: str) -> tuple[float, float]:
    """'PRUNE,BITS' as two numbers.

    >>> parse_point("0.5,4")
    (0.5, 4.0)
    """
    parts = text.split(",")
    try:
        prune, bits = (float(p) for p in parts)
    except ValueError:
        raise OptionError(f"--plot-point wants PRUNE,BITS (two numbers), got {text!r}") from None
    return prune, bits


# ---------------------------------------------------------------- one point (runs in a worker)


@dataclass(frozen=True)
class PointTask:
    src: str
    dst: str
    prune: float
    bits: float
    data: str
    batch: int
    labels_key: str
    threads: int


def run_point(task: PointTask) -> dict:
    """Compress SRC at one grid point and measure it against SRC; the row and its per-layer report."""
    from .compress import compress_file
    from .evaluate import compare
    from ..methods.opq import OpqConfig
    from ..runtime.data import open_batches
    from ..runtime.sessions import open_session

    report_path = Path(task.dst).with_suffix(".json")
    report = compress_file(task.src, task.dst, OpqConfig(prune=task.prune, bits=task.bits),
                           report_path=report_path)
    ref = open_session(task.src, task.threads)
    result = compare(ref, open_session(task.dst, task.threads),
                     open_batches(task.data, ref, task.batch, task.labels_key))
    t = report["totals"]
    row = {"prune": task.prune, "bits": task.bits, "prune_ratio": t["prune_ratio"], "avg_bits": t["avg_bits"],
           "rate": t["rate"], "storage_rate": t["storage_rate"], "bytes": t["bytes_out"],
           "accuracy": result.accuracy, "agreement": result.agreement, "snr_db": result.snr_db,
           "model": task.dst}
    return {"row": row, "ref_accuracy": result.ref_accuracy, "report": str(report_path)}


# ---------------------------------------------------------------- the grid


def _point_name(stem: str, prune: float, bits: float) -> str:
    return f"{stem}_p{prune:g}_b{bits:g}"


def _tasks(src: Path, data: str, out: Path, config: SweepConfig) -> list[PointTask]:
    threads = max(1, cpu_cores() // config.jobs)
    models = out / "models"
    return [PointTask(str(src), str(models / (_point_name(src.stem, p, b) + ".onnx")), p, b, str(data),
                      config.batch, config.labels_key, threads) for p, b in config.grid()]


def _outputs(tasks: list[PointTask], out: Path) -> list[tuple[str, Path]]:
    """(label, path) of every file the sweep writes (the figures aside)."""
    files = [("sweep table", out / "sweep.csv"), ("sweep summary", out / "sweep.json")]
    for task in tasks:
        files += [("point model", Path(task.dst)), ("point report", Path(task.dst).with_suffix(".json"))]
    return files


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it cancels and cleans up


def _run_all(tasks: list[PointTask], jobs: int, progress) -> list[dict]:
    if jobs == 1:
        return list(map(run_point, progress(tasks, len(tasks)) if progress else tasks))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: the parent's onnxruntime thread pools must not be forked mid-use
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_sigint)
    try:
        futures = {pool.submit(run_point, task): i for i, task in enumerate(tasks)}
        results: list[dict | None] = [None] * len(tasks)
        done = as_completed(futures)
        for future in (progress(done, len(tasks)) if progress else done):
            results[futures[future]] = future.result()
    finally:  # on a failure or Ctrl-C the points not started are dropped, the running ones end
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _undo(written: list[tuple[str, Path]], existed: set[Path], created: list[Path]) -> None:
    """Remove what a failed sweep wrote: files that were not there before it, and its new folders."""
    from ..graph.io import remove_model

    for _, path in written:
        if path not in existed:
            remove_model(path) if path.suffix == ".onnx" else path.unlink(missing_ok=True)
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass


def sweep(src: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
          config: SweepConfig = SweepConfig(), progress=None) -> dict:
    """Compress and measure every grid point; write sweep.csv and sweep.json into `out_dir`."""
    from ..graph.io import check_model_valid, file_bytes, load_model_lazy, model_inputs
    from ..graph.outputs import check_outputs
    from ..runtime.data import open_batches
    from ..runtime.sessions import open_session

    src, out = Path(src), Path(out_dir)
    tasks = _tasks(src, str(data), out, config)
    written = _outputs(tasks, out)
    check_outputs([*model_inputs(src), ("the --data file", data)], written,
                  folders=[("--out folder", out), ("models folder", out / "models")])
    ref = open_session(src)
    check_model_valid(load_model_lazy(src), src)
    open_batches(data, ref, config.batch, config.labels_key)  # errors before any work
    declared = ref.get_outputs()[0].shape
    if isinstance(declared, list) and len(declared) == 1:
        raise ModelError(f"{src}: output 0 has no class axis: the sweep scores points by top-1 accuracy or "
                         "agreement; use onnxjpq eval for the output SNR")
    existed = {path for _, path in written if path.exists()}
    created = [d for d in (out, out / "models") if not d.exists()]
    (out / "models").mkdir(parents=True, exist_ok=True)
    try:
        summary = _summarize(src, data, config, _run_all(tasks, config.jobs, progress), file_bytes(src))
        write_tables(summary, out)
    except BaseException:  # a failed or interrupted sweep leaves nothing behind
        _undo(written, existed, created)
        raise
    return summary


def _summarize(src: Path, data, config: SweepConfig, results: list[dict], src_bytes: int) -> dict:
    """The sweep's summary: the rows, fp32's figures, the Pareto front and the plot point."""
    rows = [r["row"] for r in results]
    labelled = results[0]["ref_accuracy"] is not None
    metric = "accuracy" if labelled else "agreement"
    reference = {"rate": 1.0, "bytes": src_bytes, "accuracy": results[0]["ref_accuracy"],
                 "agreement": 100.0}
    front = pareto_front([r["rate"] for r in rows], [r[metric] for r in rows])
    chosen = (rows[config.grid().index(tuple(config.plot_point))] if config.plot_point is not None
              else choose_point(rows, reference[metric], metric, config.plot_drop))
    summary = {"source": str(src), "data": str(data), "metric": metric, "reference": reference,
               "config": asdict(config), "pareto": [[rows[i]["prune"], rows[i]["bits"]] for i in front],
               "plot_point": [chosen["prune"], chosen["bits"]],
               "points": [{**row, "report": r["report"]} for row, r in zip(rows, results)]}
    return summary


def write_tables(summary: dict, out: Path) -> None:
    """sweep.csv (one row per point) and sweep.json (the rows, fp32's figures, the Pareto front)."""
    from .evaluate import to_json
    from ..graph.io import write_text_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary["points"])
    write_text_atomic(out / "sweep.csv", buffer.getvalue())
    write_text_atomic(out / "sweep.json", to_json(summary))


def plot_sweep_files(summary: dict, out: Path) -> list[Path]:
    """sweep.png (metric against rate) and the per-layer figure of the summary's plot point."""
    from .plots import plot_layers, plot_sweep

    metric = summary["metric"]
    chosen = next(r for r in summary["points"] if [r["prune"], r["bits"]] == summary["plot_point"])
    report = json.loads(Path(chosen["report"]).read_text())
    title = (f"{Path(summary['source']).name} --prune {chosen['prune']:g} --bits {chosen['bits']:g}: "
             f"rate {chosen['rate']:.1f}x, {metric} {chosen[metric]:.2f} %")
    name = _point_name("layers", chosen["prune"], chosen["bits"]) + ".png"
    return [plot_sweep(summary, out / "sweep.png", highlight=chosen), plot_layers(report, out / name, title)]


def print_sweep(summary: dict, console) -> None:
    from rich.table import Table

    metric, ref = summary["metric"], summary["reference"]
    front = {tuple(p) for p in summary["pareto"]}
    table = Table(title=f"onnxjpq sweep: {summary['source']} ({metric} on {summary['data']})", header_style="bold")
    for col in ("prune", "bits", "pruned", "avg bits", "rate", "storage", "KB", metric, "SNR dB", "Pareto"):
        table.add_column(col, justify="right")
    table.add_row("fp32", "32", "0.0%", "32.00", "1.0x", "1.0x", f"{ref['bytes'] / 1024:.1f}",
                  f"{ref[metric]:.2f}", "", "")
    for r in summary["points"]:
        table.add_row(f"{r['prune']:g}", f"{r['bits']:g}", f"{r['prune_ratio']:.1%}", f"{r['avg_bits']:.2f}",
                      f"{r['rate']:.1f}x", f"{r['storage_rate']:.1f}x", f"{r['bytes'] / 1024:.1f}",
                      f"{r[metric]:.2f}", f"{r['snr_db']:.1f}", "*" if (r["prune"], r["bits"]) in front else "")
    console.print(table)
