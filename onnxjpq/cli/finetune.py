"""`onnxjpq finetune`."""

from __future__ import annotations

import json

import click


from .common import given_options, make_console, user_errors
from .group import main
from .options import method_config, selection_from, with_selection


_METHOD_OPTIONS = {"--pow2-bits": ("djpq",), "--float-activations": ("djpq",), "--rho": ("admm",),
                   "--retrain-epochs": ("admm", "djpq")}


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help=".npz of training inputs (labels optional: without them, distil from SRC's outputs).")
@click.option("--val", "val_path", type=click.Path(dir_okay=False), help=".npz to report accuracy on each epoch.")
@click.option("--method", type=click.Choice(["masked", "admm", "djpq"]), default="masked", show_default=True,
              help="masked: OPQ's retraining with masks, steps and channel ranges frozen (STE); "
                   "admm: ANNC/progressive ADMM to --rate, then masked retraining; "
                   "djpq: learned bit-widths and channel gates to a --rate BOPs reduction.")
@click.option("--prune", type=float, default=None, help="masked, OPQ plan: global prune ratio.")
@click.option("--bits", type=float, default=None, help="masked, OPQ plan: average bits.")
@click.option("--rate", type=float, default=None,
              help="masked: budget plan's storage rate; admm: the papers' rate 32N/sum(bits x nonzero); "
                   "djpq: BOPs reduction.")
@click.option("--pow2-bits", is_flag=True, help="djpq: restrict learned bit-widths to powers of two.")
@click.option("--float-activations", is_flag=True,
              help="djpq: keep the layers' inputs float (32 bits in BOPs); by default each is quantized "
                   "(QuantizeLinear, DequantizeLinear) at a width learned from 8 down to 4 bits.")
@click.option("--epochs", type=int, default=5, show_default=True, help="Training epochs (admm: ADMM epochs).")
@click.option("--retrain-epochs", type=int, default=10, show_default=True,
              help="admm/djpq: masked retraining epochs after the final projection / the learned bits and channels.")
@click.option("--rho", type=float, default=1e-3, show_default=True, help="admm: initial penalty (x1.3 per epoch).")
@click.option("--lr", type=float, default=1e-2, show_default=True,
              help="Learning rate (djpq: of its Adam phases, default 1e-3).")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Checkpoint file, written after every epoch (default: DST.ckpt); removed when the run "
                   "succeeds or fails, kept when it is interrupted (Ctrl-C) or killed.")
@click.option("--resume", is_flag=True,
              help="Continue from the checkpoint of an interrupted run; refused if any setting differs.")
@click.option("--keep-checkpoint", is_flag=True, help="Keep the checkpoint after a successful run.")
@with_selection
@click.option("--int4/--no-int4", default=True, show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (logs stay on stderr).")
@user_errors("src")
def finetune(src, dst, data_path, val_path, method, prune, bits, rate, pow2_bits, float_activations, epochs,
             retrain_epochs, rho, lr, batch, optimizer, checkpoint, resume, keep_checkpoint, include, exclude, keep,
             min_params, embeddings, int4, report_path, quiet, as_json):
    """Fine-tune SRC in PyTorch under a compression plan, then rewrite it like compress."""
    from ..errors import OptionError
    from ..finetune.cli import run_finetune

    for flag, methods in _METHOD_OPTIONS.items():
        if method not in methods and given_options(**{flag[2:].replace("-", "_"): flag}):
            raise OptionError(f"{flag} only applies to --method {' and '.join(methods)}; with --method {method} "
                              "it has no effect")
    if method in ("admm", "djpq"):
        from ..finetune.admm import AdmmConfig
        from ..finetune.djpq import DjpqConfig
        if rate is None or prune is not None or bits is not None:
            raise OptionError(f"--method {method} takes --rate, not --prune/--bits")
        config = (AdmmConfig(rate=rate, epochs=epochs, retrain_epochs=retrain_epochs, rho=rho) if method == "admm"
                  else DjpqConfig(rate=rate, epochs=epochs, retrain_epochs=retrain_epochs, pow2=pow2_bits,
                                  act_bits=None if float_activations else DjpqConfig.act_bits,
                                  **({"lr": lr} if given_options(lr="--lr") else {})))
    else:
        config = method_config(prune, bits, "laplace", True, rate, None, 2, 8, False, "size", None, None)
    report = run_finetune(src, dst, data_path, val_path, method, config,
                          selection_from(include, exclude, keep, min_params, embeddings),
                          dict(epochs=epochs, lr=lr, batch=batch, optimizer=optimizer,
                               checkpoint=checkpoint or f"{dst}.ckpt", resume=resume),
                          int4, report_path, make_console(quiet), keep_checkpoint=keep_checkpoint)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
