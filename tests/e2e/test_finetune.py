"""Fine-tuning: the torch bridge reproduces onnxruntime, masked retraining recovers accuracy, runs resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxjpq import ModelError, OpqConfig  # noqa: E402
from onnxjpq.finetune.bridge import OnnxModule, with_weights  # noqa: E402
from onnxjpq.finetune.masked import channel_limits  # noqa: E402
from onnxjpq.finetune.run import finetune  # noqa: E402
from onnxjpq.finetune.train import TrainConfig  # noqa: E402
from onnxjpq.graph.io import load_model  # noqa: E402
from onnxjpq.testing import make_model  # noqa: E402
from onnxjpq.graph.layers import Selection  # noqa: E402
from onnxjpq.runtime.data import load_dataset  # noqa: E402
from onnxjpq.runtime.sessions import accuracy, predict, session

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_bridge_matches_onnxruntime_on_the_bundled_models(name):
    model = load_model(MODELS / f"{name}.onnx")
    data = load_dataset(MODELS / f"{name}_test.npz", session(model))
    module = OnnxModule(model)
    with torch.no_grad():
        out = module(torch.from_numpy(data.inputs["input"]))[0].numpy()
    np.testing.assert_allclose(out, predict(session(model), data), atol=1e-4)


def test_bridge_refuses_unsupported_ops_by_name():
    model = make_model("""
    agraph (float[1, 4] x) => (float[1, 4] y) {
        y = Hardmax(x)
    }""", {})
    with pytest.raises(ModelError, match="Hardmax"):
        OnnxModule(model)


def test_with_weights_replaces_only_the_named_tensors():
    model = load_model(MODELS / "lenet300.onnx")
    new = with_weights(model, {"fc1.weight": np.zeros((300, 64), np.float32)})
    values = {t.name: t for t in new.graph.initializer}
    assert not np.frombuffer(values["fc1.weight"].raw_data, np.float32).any()
    assert values["fc2.weight"] == {t.name: t for t in model.graph.initializer}["fc2.weight"]


def test_channel_limits_broadcast_each_channels_largest_code():
    codes = np.array([[1, -3, 0], [2, 0, -1]])
    assert channel_limits(codes, 0).tolist() == [[3, 3, 3], [2, 2, 2]]
    assert channel_limits(codes, None).tolist() == [[3, 3, 3], [3, 3, 3]]


@pytest.mark.slow
def test_masked_retraining_recovers_post_training_loss():
    model = load_model(MODELS / "lenet5.onnx")
    train = load_dataset(MODELS / "lenet5_train.npz", session(model))
    test = load_dataset(MODELS / "lenet5_test.npz", session(model))
    out, report = finetune(model, OpqConfig(prune=0.9, bits=3), train, TrainConfig(epochs=6, lr=0.01), val=test)
    fp32 = accuracy(predict(session(model), test), test.labels)
    before, after = report["finetune"]["accuracy_before"], accuracy(predict(session(out), test), test.labels)
    assert before < fp32 - 2  # post-training loses more than 2 points here
    assert after >= fp32 - 3 and after > before + 30
    assert abs(report["totals"]["prune_ratio"] - 0.9) < 0.01 and abs(report["totals"]["avg_bits"] - 3) < 0.1
    assert report["finetune"]["torch_vs_onnxruntime_max_abs"] < 1e-3


def _finetune_cli(tmp_path: Path, dst: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "onnxjpq", "finetune", str(MODELS / "lenet300.onnx"), "-o", str(tmp_path / dst),
            "--data", str(MODELS / "lenet300_train.npz"), "--prune", "0.8", "--bits", "4", *extra]


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path):
    straight = subprocess.run(_finetune_cli(tmp_path, "a.onnx", "--epochs", "12"), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    ckpt = tmp_path / "b.onnx.ckpt"
    proc = subprocess.Popen(_finetune_cli(tmp_path, "b.onnx", "--epochs", "12"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "b.onnx").exists()
    resumed = subprocess.run(_finetune_cli(tmp_path, "b.onnx", "--epochs", "12", "--resume"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def _kill_at(cmd: list[str], ckpt: Path, phase: str) -> None:
    """Start `cmd` and SIGKILL it once its checkpoint is of `phase`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["phase"] == phase:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["admm", "djpq"])
def test_a_run_killed_in_each_phase_resumes_and_matches_an_uninterrupted_one(tmp_path, method):
    with np.load(MODELS / "lenet5_train.npz") as f:
        np.savez(tmp_path / "small.npz", **{k: f[k][:256] for k in f.files})

    def cli(dst: str, *extra: str) -> list[str]:
        rate = ["--rate", "20"] if method == "djpq" else ["--rate", "32", "--retrain-epochs", "4"]
        return [sys.executable, "-m", "onnxjpq", "finetune", str(MODELS / "lenet5.onnx"), "-o", str(tmp_path / dst),
                "--data", str(tmp_path / "small.npz"), "--method", method, "--epochs", "3", *rate, *extra]

    straight = subprocess.run(cli("a.onnx"), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    ckpt = tmp_path / "b.onnx.ckpt"
    _kill_at(cli("b.onnx"), ckpt, method)  # in ADMM or the joint DJPQ training
    _kill_at(cli("b.onnx", "--resume"), ckpt, "masked")  # in the retraining
    assert not (tmp_path / "b.onnx").exists()
    resumed = subprocess.run(cli("b.onnx", "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_resuming_another_methods_checkpoint_is_a_clear_error(tmp_path):
    from onnxjpq.finetune.train import _save_checkpoint

    _save_checkpoint(str(tmp_path / "c.onnx.ckpt"), {"method": "masked", "phase": "masked"})
    result = subprocess.run([*_finetune_cli(tmp_path, "c.onnx")[:-4], "--method", "admm", "--rate", "20",
                             "--resume"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "is a checkpoint of a masked run, not admm" in result.stderr


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    result = subprocess.run(_finetune_cli(tmp_path, "c.onnx", "--resume"), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --resume: no checkpoint")


@pytest.mark.slow
def test_admm_reaches_rate_64_within_one_point(tmp_path):
    from onnxjpq.finetune.admm import AdmmConfig

    model = load_model(MODELS / "lenet5.onnx")
    train = load_dataset(MODELS / "lenet5_train.npz", session(model))
    test = load_dataset(MODELS / "lenet5_test.npz", session(model))
    out, report = finetune(model, AdmmConfig(rate=64, epochs=15, retrain_epochs=8), train,
                           TrainConfig(lr=0.01), method="admm", val=test)
    fp32 = accuracy(predict(session(model), test), test.labels)
    assert report["totals"]["rate"] >= 64
    assert accuracy(predict(session(out), test), test.labels) >= fp32 - 1.0
    assert [e["phase"] for e in report["finetune"]["history"]] == ["admm"] * 15 + ["masked"] * 8


def test_admm_progressive_targets_rise_to_the_rate():
    from onnxjpq.finetune.admm import AdmmConfig

    config = AdmmConfig(rate=64, epochs=15)
    rates = [config.rate_at(e) for e in range(16)]
    assert rates[0] == 8 and rates[-1] == 64
    assert all(a <= b for a, b in zip(rates, rates[1:]))


@pytest.mark.slow
def test_torchrun_with_two_processes_matches_one_process(tmp_path):
    import json
    import shutil

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    args = ["--epochs", "3"]
    single = subprocess.run(_finetune_cli(tmp_path, "one.onnx", *args), capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    cmd = _finetune_cli(tmp_path, "two.onnx", *args, "--report", str(tmp_path / "two.json"))
    double = subprocess.run([torchrun, "--nproc_per_node", "2", *cmd[1:]], capture_output=True, text=True)
    assert double.returncode == 0, double.stderr
    assert json.loads((tmp_path / "two.json").read_text())["finetune"]["processes"] == 2
    data = load_dataset(MODELS / "lenet300_test.npz", session(str(tmp_path / "one.onnx")))
    one = predict(session(str(tmp_path / "one.onnx")), data)
    two = predict(session(str(tmp_path / "two.onnx")), data)
    assert (one.argmax(1) == two.argmax(1)).mean() >= 0.98
    assert abs(accuracy(one, data.labels) - accuracy(two, data.labels)) <= 1.0


def _djpq_at_rate_20(name: str, rate: float = 20, act_bits: int | None = 8) -> tuple[float, dict, onnx.ModelProto]:
    """DJPQ at --rate 20 on a bundled model: the accuracy drop in points, the report, the model."""
    from onnxjpq.finetune.djpq import DjpqConfig

    model = load_model(MODELS / f"{name}.onnx")
    train = load_dataset(MODELS / f"{name}_train.npz", session(model))
    test = load_dataset(MODELS / f"{name}_test.npz", session(model))
    out, report = finetune(model, DjpqConfig(rate=rate, epochs=20, retrain_epochs=8, act_bits=act_bits), train,
                           TrainConfig(), method="djpq", val=test)
    fp32 = accuracy(predict(session(model), test), test.labels)
    return fp32 - accuracy(predict(session(out), test), test.labels), report, out


@pytest.mark.slow
def test_djpq_reaches_20x_fewer_bops_within_one_point():
    drop, report, _ = _djpq_at_rate_20("lenet5")
    assert drop <= 1.0
    assert report["totals"]["bops_ratio"] >= 20  # measured on the written codes: bits, pruned rows and columns
    assert report["totals"]["bops_ratio_learned"] >= 20  # eq. 15-16: kept channels in and out, stored widths
    assert report["finetune"]["torch_vs_onnxruntime_max_abs"] < 1e-3
    assert min(bits for bits in report["finetune"]["learned_bits"].values()) >= 3  # the floor held


@pytest.mark.slow
def test_djpq_with_activation_quantizers_goes_past_its_float_activation_bops_within_one_point():
    """Issue 14: learned input widths counted in BOPs (weight bits x input bits, not x 32) reach
    at least what float inputs reach at --rate 20, within a point, written as activation QDQ."""
    _, floats, _ = _djpq_at_rate_20("lenet5", act_bits=None)
    assert floats["finetune"]["learned_input_bits"] == {}  # float inputs: 32 bits in its BOPs
    drop, report, out = _djpq_at_rate_20("lenet5", rate=34)
    assert drop <= 1.0
    for figure in ("bops_ratio", "bops_ratio_learned"):
        assert report["totals"][figure] >= floats["totals"][figure], figure
    assert report["totals"]["bops_ratio_learned"] >= 34
    widths = report["finetune"]["learned_input_bits"]
    assert len(widths) == 6 and all(4 <= b <= 8 for b in widths.values()) and min(widths.values()) < 8
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert len(quantized) == 6 and "input" in quantized  # the layers' float inputs, not weights
    assert report["finetune"]["torch_vs_onnxruntime_max_abs"] < 1e-3


@pytest.mark.slow
def test_djpq_does_not_collapse_an_mlp():
    """lenet300's ranges (~0.2) were clipped away within an epoch when q_m took Adam's absolute steps."""
    drop, report, _ = _djpq_at_rate_20("lenet300")
    assert drop <= 2.0
    assert report["totals"]["bops_ratio_learned"] >= 20


def _djpq_state(model, config=None):
    from onnxjpq.pipeline.compress import find_model_layers
    from onnxjpq.finetune.djpq import DjpqConfig, DjpqState
    from onnxjpq.graph.macs import layer_macs, tensor_shapes

    layers, _ = find_model_layers(model)
    shapes = tensor_shapes(model)
    module = OnnxModule(model)
    macs = {l.name: layer_macs(l, shapes) for l in layers}
    return module, DjpqState(module, layers, macs, config or DjpqConfig(), shapes)


def _export_in_place(module, state, x):
    """The module's output on x before and after the DJPQ export replaces its weights, and the export."""
    module.eval()
    with torch.no_grad():
        before = module(x)[0]
    arrays, plan = state.export()
    state.detach()
    with torch.no_grad():
        for name, values in arrays.items():
            module.parameter(name).copy_(torch.from_numpy(values))
        after = module(x)[0]
    return before, after, arrays, plan


def test_djpq_links_each_layer_to_the_layer_feeding_its_input_channels():
    _, state = _djpq_state(load_model(MODELS / "lenet5.onnx"))
    assert {n: (k.producer, k.axis, k.repeat) for n, k in state.links.items()} == {
        "conv2.weight": ("conv1.weight", 1, 1), "conv3.weight": ("conv2.weight", 1, 1),
        "fc1.weight": ("conv3.weight", 1, 4),  # conv3's 64 channels of 2x2, flattened
        "fc2.weight": ("fc1.weight", 1, 1), "fc3.weight": ("fc2.weight", 1, 1)}


def test_djpq_export_drops_the_inputs_of_pruned_channels_exactly_and_counts_them_in_bops():
    model = load_model(MODELS / "lenet5.onnx")
    x = torch.from_numpy(load_dataset(MODELS / "lenet5_test.npz", session(model)).inputs["input"][:64])
    module, state = _djpq_state(model)
    dense = state.bops_ratio()
    with torch.no_grad():
        state.quantizers["conv1.weight"].mu[:4] = 0.0
        state.quantizers["conv3.weight"].mu[:32] = 0.0
    conv3_share = float(state.macs[2] / state.macs.sum())
    before, after, arrays, plan = _export_in_place(module, state, x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert not arrays["conv2.weight"][:, :4].any() and arrays["conv2.weight"][:, 4:].any()
    assert not arrays["fc1.weight"][:, :128].any() and arrays["fc1.weight"][:, 128:].any()
    assert plan.diagnostics["kept_channels"]["conv3.weight"] == [32, 64]
    # conv3 lost half its outputs and fc1 half its inputs: more saved than conv3's own half
    assert plan.diagnostics["bops_ratio_learned"] > dense / (1 - conv3_share / 2)


def test_djpq_meets_the_budget_by_pruning_the_least_informative_channels_that_feed_a_layer():
    from onnxjpq.finetune.djpq import DjpqConfig

    _, state = _djpq_state(load_model(MODELS / "lenet5.onnx"), DjpqConfig(rate=12, min_bits=3))
    with torch.no_grad():
        for q in state.quantizers.values():
            q.log_d.fill_(20.0)  # at the 3-bit floor: 1024 / 96 = 10.7x, short of 12x
            q.mu.copy_(torch.linspace(0.5, 1.0, len(q.mu)))
    assert state.bops_ratio() < 12
    pruned = state.meet_budget()
    assert pruned > 0 and state.bops_ratio() >= 12
    assert int(state.quantizers["fc3.weight"].kept().sum()) == 10  # the logits feed no layer
    for q in state.quantizers.values():  # the lowest gates went first
        kept = q.kept()
        assert kept.all() or not kept[0]


def test_djpq_prunes_nothing_after_training_when_the_budget_is_out_of_reach_anyway():
    from onnxjpq.finetune.djpq import DjpqConfig

    _, state = _djpq_state(load_model(MODELS / "lenet5.onnx"), DjpqConfig(rate=200, min_bits=3))
    with torch.no_grad():
        for q in state.quantizers.values():
            q.log_d.fill_(20.0)  # at the 3-bit floor: 10.7x; pruning a quarter of each layer cannot give 200x
    before = state.bops_ratio()
    assert state.meet_budget() == 0
    assert state.bops_ratio() == before and all(bool(q.kept().all()) for q in state.quantizers.values())


def test_djpq_quantizer_bits_stay_between_2_and_8():
    from onnxjpq.finetune.djpq import LayerQuantizer

    q = LayerQuantizer(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), 0, 4, pow2=False)
    with torch.no_grad():
        for log_d in (-20.0, 0.0, 20.0):
            q.log_d.fill_(log_d)
            assert 2.0 <= float(q.bits()) <= 8.0 + 1e-6


@pytest.mark.parametrize("low, high", [(-1.5, 0.7), (0.0, 3.0)])
@pytest.mark.parametrize("pow2", [False, True])
def test_djpq_activation_quantizer_computes_what_its_written_form_stores(low, high, pow2):
    """Its width stays within 4..8 bits whatever d learns, and its forward pass is the
    clip(round(x / scale)) x scale that QuantizeLinear, DequantizeLinear and Clip compute."""
    from onnxjpq.finetune.djpq import ActivationQuantizer

    q = ActivationQuantizer(low, high, 8, pow2, 4)
    assert q.signed == (low < 0)
    x = torch.linspace(-4, 4, 1001)
    with torch.no_grad():
        for log_d in (-20.0, -3.0, 20.0):
            q.log_d.fill_(log_d)
            assert 4 <= float(q.stored_bits()) <= 8
            written = q.written("t")
            lo, hi = written.bounds()
            expected = np.clip(np.round(x.numpy() / np.float32(written.scale)) * np.float32(written.scale), lo, hi)
            np.testing.assert_allclose(q(x).numpy(), expected, rtol=1e-6, atol=1e-6)
            assert written.largest <= (127 if q.signed else 255)


def test_a_users_own_torch_module_is_trained_in_place_of_the_bridge():
    sys.path.insert(0, str(MODELS.parent / "tools"))
    from make_demo_models import make_lenet300

    model = load_model(MODELS / "lenet300.onnx")
    net = make_lenet300()
    net.load_state_dict({t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
                         for t in model.graph.initializer})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train = load_dataset(MODELS / "lenet300_train.npz", session(model))
    out, report = finetune(model, OpqConfig(prune=0.5, bits=4), train, TrainConfig(epochs=1), torch_module=net)
    assert report["finetune"]["torch_vs_onnxruntime_max_abs"] < 1e-3
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())  # it trained the user's net
    test = load_dataset(MODELS / "lenet300_test.npz", session(model))
    assert accuracy(predict(session(out), test), test.labels) >= 90


def test_a_torch_module_with_other_parameter_names_is_refused():
    model = load_model(MODELS / "lenet300.onnx")
    train = load_dataset(MODELS / "lenet300_train.npz", session(model))
    with pytest.raises(ModelError, match="parameter names must match"):
        finetune(model, OpqConfig(bits=8), train, TrainConfig(epochs=1), torch_module=torch.nn.Linear(64, 10))


@pytest.mark.parametrize("given", [True, False])
def test_djpq_takes_its_learning_rate_from_the_command_line(tmp_path, given):
    """--lr reached the retraining only: DJPQ's joint phase kept 1e-3 and diverged on a real CNN."""
    import json

    from click.testing import CliRunner
    from onnxjpq.cli import main

    report = tmp_path / "r.json"
    args = ["finetune", str(MODELS / "lenet300.onnx"), "-o", str(tmp_path / "o.onnx"), "--data",
            str(MODELS / "lenet300_test.npz"), "--method", "djpq", "--rate", "4", "--epochs", "1",
            "--retrain-epochs", "1", "--report", str(report), "-q", *(["--lr", "0.0005"] if given else [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["finetune"]["config"]["lr"] == (0.0005 if given else 1e-3)


@pytest.mark.parametrize("floats", [True, False])
def test_djpq_quantizes_the_layer_inputs_unless_asked_for_float_activations(tmp_path, floats):
    import json

    from click.testing import CliRunner
    from onnxjpq.cli import main

    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    args = ["finetune", str(MODELS / "lenet300.onnx"), "-o", str(out), "--data", str(MODELS / "lenet300_test.npz"),
            "--method", "djpq", "--rate", "4", "--epochs", "1", "--retrain-epochs", "1", "--report", str(report),
            "-q", *(["--float-activations"] if floats else [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert written["finetune"]["config"]["act_bits"] == (None if floats else 8)
    quantized = [n for n in onnx.load(str(out)).graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized) == (0 if floats else 3)  # lenet300's three Gemm inputs
    assert written["finetune"]["torch_vs_onnxruntime_max_abs"] < 1e-4


def test_djpq_on_a_folded_batchnorm_quantizes_the_unscaled_weight_and_exports_what_it_trained():
    """A BatchNormalization folded into its Conv (graph.fold) leaves its per-channel scale outside
    DJPQ's one learned range: the codes are those of the unfolded weight, the steps carry the scale,
    and the export computes what the module computed."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxjpq.finetune.djpq import DjpqConfig, DjpqState
    from onnxjpq.graph.fold import fold_batch_norms
    from onnxjpq.graph.macs import layer_macs, tensor_shapes
    from onnxjpq.pipeline.compress import find_model_layers
    from onnxjpq.testing import laplace

    rng = np.random.default_rng(0)
    gamma = np.geomspace(0.01, 10, 8).astype(np.float32)  # channel scales three decades apart
    inits = [numpy_helper.from_array(laplace((8, 3, 3, 3)), "W1"), numpy_helper.from_array(gamma, "g"),
             *(numpy_helper.from_array(a.astype(np.float32), n) for a, n in
               ((rng.normal(size=8), "b"), (rng.normal(size=8), "m"), (rng.uniform(0.5, 2, 8), "v"))),
             numpy_helper.from_array(laplace((4, 8, 3, 3), seed=1), "W2")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W1"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
         helper.make_node("Relu", ["n"], ["r"]), helper.make_node("Conv", ["r", "W2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])], inits)
    scales = {}
    model, folded = fold_batch_norms(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), scales)
    assert folded == 1 and set(scales) == {"W1"}
    layers, _ = find_model_layers(model, Selection(min_params=0))
    shapes = tensor_shapes(model)
    module = OnnxModule(model)
    state = DjpqState(module, layers, {l.name: layer_macs(l, shapes) for l in layers}, DjpqConfig(), shapes,
                      scales)
    q = state.quantizers["W1"]
    w = module.parameter("W1").detach()
    codes = q.codes(w).detach()  # the unfolded weight's codes: every channel uses the range, not just the widest
    assert all(float(codes[c].abs().max()) >= 64 for c in range(8))
    x = torch.from_numpy(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))
    before, after, arrays, plan = _export_in_place(module, state, x)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    layer_plan = next(p for p in plan.layers if p.name == "W1")
    assert layer_plan.channel_axis == 0 and np.ptp(np.log10(layer_plan.channel_steps)) > 2  # the scales
