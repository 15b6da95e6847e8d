"""Training-step throughput of the reference's two models under Keras' JAX backend, beside PyTorch (the
original's framework, benchmarks/torch_step.py) on the same device: images/s, their ratio and MFU.

Rows: the classifier (spec 6.2, DenseNet121, 512 x 512 x 4, batch 32 and 64) and the metric model (spec
6.4, ResNet50 embedder under ArcMarginProduct over 12,815 antibodies, 768 x 768 x 4, batch 32), each in fp32
and bf16 (Keras' "mixed_bfloat16" policy; torch autocast), Adam, the package's losses. The Keras step is one
compiled stateless function (stateless_call, value_and_grad, the optimizer's stateless_apply: Keras' "training
loop from scratch in JAX" pattern). PyTorch runs first, in its own process (channels_last, optional
torch.compile), then Keras; rows that no longer fit the time budget are shown as skipped. FLOPs per step are
XLA's count of the compiled step (forward, backward and update); MFU = FLOPs / step time / the chip's peak;
"compile s" is Keras' lowering and compilation of the step.

    KERAS_BACKEND=jax python benchmarks/gpu_step.py               # one GPU: the table, under 8 minutes
    KERAS_BACKEND=jax python benchmarks/gpu_step.py --cpu-smoke   # tiny settings on CPU (CI)

KERAS_BACKEND=tensorflow runs the Keras side under TensorFlow (XLA) for a local comparison (no FLOP count).
Last line: `gpu_step: done`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BACKENDS = ("jax", "tensorflow")
# Dense peaks of an H200 SXM (datasheet, TFLOP/s): bf16 and tf32 on tensor cores, fp32 without.
PEAK_TFLOPS = {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}
# Two rows that cover both models and both precisions, with the demo's small DenseNet.
SMOKE = dict(backbone="densenet_1_1_1_1", metric_backbone="densenet_1_1_1_1", size=64, metric_size=64,
             batches=[2], metric_batch=2, precisions=["fp32"], metric_precisions=["bf16"], classes=100,
             steps=2, warmup=1)


@dataclass(frozen=True)
class Row:
    """One measured setting: which model, at which input size, batch and precision."""

    kind: str  # "classifier" or "metric"
    backbone: str
    size: int
    batch: int
    precision: str  # "fp32" or "bf16"
    classes: int

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.backbone}/{self.size}/{self.batch}/{self.precision}"


def timed(step, sync, warmup: int, steps: int) -> float:
    """Seconds per step of `step()`: `warmup` untimed steps, then `steps` timed ones; `sync(result)` waits
    until the device has finished (block_until_ready, cuda.synchronize)."""
    result = None
    for _ in range(warmup):
        result = step()
    sync(result)
    start = time.perf_counter()
    for _ in range(steps):
        result = step()
    sync(result)
    return (time.perf_counter() - start) / steps


class Budget:
    """The time left before a deadline, and whether a row still fits: a row is expected to take as long
    as the longest finished row of its kind (the first of each kind always runs)."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds
        self.taken: dict[str, float] = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, row: Row) -> bool:
        return self.taken.get(row.kind, 0.0) <= self.left()

    def record(self, row: Row, seconds: float) -> None:
        self.taken[row.kind] = max(self.taken.get(row.kind, 0.0), seconds)

    def measure(self, row: Row, measure) -> dict:
        """measure(row)'s result, timed and recorded, if the row still fits; a failure (e.g. out of memory)
        is printed and reported in the result, so that one failed row keeps the others."""
        if not self.fits(row):
            return {"images_per_s": "skipped (budget)"}
        start = time.perf_counter()
        try:
            return measure(row)
        except Exception as error:  # noqa: BLE001 - see the docstring
            traceback.print_exc()
            return {"images_per_s": f"failed ({type(error).__name__})"}
        finally:
            self.record(row, time.perf_counter() - start)


def multiple_of_32(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of 32 (the backbones "
                                         "downsample 32x; the reference's sizes are 512 and 768)")
    return value


def peak_pair(text: str) -> tuple[str, float]:
    """NAME=TFLOPS of --peak-tflops, NAME one of PEAK_TFLOPS' keys."""
    name, _, value = text.partition("=")
    try:
        if name in PEAK_TFLOPS:
            return name, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not NAME=TFLOPS with NAME one of {sorted(PEAK_TFLOPS)}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--cpu-smoke", action="store_true", help="tiny settings on CPU (small DenseNet, 64 px, batch 2)")
    add("--backbone", default="densenet121", help="classifier backbone (default densenet121)")
    add("--size", type=multiple_of_32, default=512, help="classifier input side (multiple of 32)")
    add("--batches", type=int, nargs="+", default=[32, 64], help="classifier batch sizes")
    add("--precisions", nargs="+", choices=list(POLICIES), default=["fp32", "bf16"], help="classifier rows")
    add("--metric-backbone", default="resnet50", help="metric model backbone (default resnet50)")
    add("--metric-size", type=multiple_of_32, default=768, help="metric model input side (multiple of 32)")
    add("--metric-batch", type=int, default=32)
    add("--metric-precisions", nargs="*", choices=list(POLICIES), default=["fp32", "bf16"],
        help="metric rows (bf16 last: it runs if the budget allows)")
    add("--classes", type=int, default=12815, help="ArcMarginProduct classes (antibodies of HPAv18)")
    add("--steps", type=int, default=20, help="timed steps per row")
    add("--warmup", type=int, default=5, help="untimed steps per row after compilation")
    add("--budget-s", type=float, default=420, help="the whole run; rows that no longer fit are skipped")
    add("--fp32-math", choices=["tf32", "ieee"], default="tf32",
        help="fp32 convolutions and matmuls on tensor cores (tf32, both frameworks' GPU default for "
             "convolutions) or in full fp32 (ieee); sets the fp32 rows' MFU peak")
    add("--peak-tflops", type=peak_pair, nargs="+", default=[], metavar="NAME=TFLOPS",
        help=f"peaks for MFU (default H200 SXM dense: {PEAK_TFLOPS})")
    add("--no-torch", action="store_true", help="Keras only (also automatic where torch is not installed)")
    add("--torch-compile", action="store_true", help="torch.compile the PyTorch models (takes minutes)")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    args.peaks = {**PEAK_TFLOPS, **dict(args.peak_tflops)}
    return args


def rows_in_priority_order(args) -> list[Row]:
    """Every row, the ones the table needs most first: the classifier at the smallest batch, the metric
    model in fp32, the other classifier batches, then the metric model's other precisions."""
    first = args.batches[0]
    classifier = [Row("classifier", args.backbone, args.size, b, p, 28) for b in args.batches
                  for p in args.precisions]
    metric = [Row("metric", args.metric_backbone, args.metric_size, args.metric_batch, p, args.classes)
              for p in args.metric_precisions]
    return [r for r in classifier if r.batch == first] + metric[:1] + \
        [r for r in classifier if r.batch != first] + metric[1:]


def torch_results(rows: list[Row], args, seconds: float) -> tuple[dict[str, dict], str]:
    """PyTorch's results by row key, run in a child process (its own device memory), and a one-line note."""
    if args.no_torch:
        return {}, "PyTorch: off (--no-torch)"
    if importlib.util.find_spec("torch") is None:
        return {}, "PyTorch: not installed, its columns are empty"
    command = [sys.executable, str(HERE / "torch_step.py"), json.dumps([dataclasses.asdict(r) for r in rows]),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--budget-s", str(int(seconds)),
               "--fp32-math", args.fp32_math, *(["--compile"] if args.torch_compile else []),
               *(["--cpu"] if args.cpu_smoke else [])]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return {}, f"PyTorch: stopped after {seconds + 60:.0f} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {}, f"PyTorch: failed (exit {done.returncode}), see its messages above"
    report = json.loads(lines[-1])
    return report["rows"], report["note"]


def jax_step(model, loss_fn, optimizer, x, y):
    """(run one step -> loss, FLOPs per step or None) of Keras' stateless training step under jax.jit:
    stateless_call and value_and_grad, then the optimizer's stateless_apply, the state donated. Lowered
    and compiled ahead; the FLOPs are XLA's cost analysis of the step (forward, backward, update)."""
    import jax
    import keras

    def loss_and_updates(trainable, non_trainable, x, y):
        predictions, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, predictions), non_trainable

    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)

    def step(state, x, y):
        trainable, non_trainable, slots = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, slots = optimizer.stateless_apply(slots, grads, trainable)
        return loss, (trainable, non_trainable, slots)

    # copies: the step donates its state, and the model's own buffers serve the next row
    state = tuple([keras.ops.copy(v.value) for v in variables] for variables in
                  (model.trainable_variables, model.non_trainable_variables, optimizer.variables))
    lowered = jax.jit(step, donate_argnums=0).lower(state, x, y)
    compiled = lowered.compile()

    def run():
        nonlocal state
        loss, state = compiled(state, x, y)
        return loss

    return run, counted_flops(lowered, compiled)


def counted_flops(*programs) -> float | None:
    """The first FLOP count XLA's cost analysis gives for these (lowered, compiled) programs, or None."""
    for program in programs:
        try:
            analysis = program.cost_analysis()
            analysis = analysis[0] if isinstance(analysis, list) else analysis
            if analysis and analysis.get("flops"):
                return float(analysis["flops"])
        except Exception:  # noqa: BLE001 - a platform without cost analysis: MFU is left out
            continue
    return None


def tf_step(model, loss_fn, optimizer, x, y):
    """(run one step -> loss, None) under TensorFlow: model call, GradientTape and optimizer.apply in one
    tf.function with XLA (Keras' stateless_apply is JAX-only), compiled by a first call."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    step()
    return step, None


def build_model(row: Row):
    """(model, loss) of a row under the current dtype policy: the classifier with classifier_loss, or the
    embedder under ArcMarginProduct (as train_metric.py builds it) with arcface_loss; random weights."""
    from hpa_tf import losses
    from hpa_tf.config import embedder_config
    from hpa_tf.models import build_classifier
    from hpa_tf.models.embedder import build_arcface_network

    if row.kind == "classifier":
        return build_classifier(row.backbone, weights=None), losses.classifier_loss
    config = embedder_config("i768", backbone=row.backbone, weights=None)
    return build_arcface_network(config, row.classes), losses.arcface_loss


def inputs(row: Row, seed: int = 0):
    """Random images in [0, 1] and labels (multi-hot for the classifier, class ids for the metric model)."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.random((row.batch, row.size, row.size, 4), dtype=np.float32)
    if row.kind == "classifier":
        labels = (rng.random((row.batch, row.classes)) < 0.1).astype(np.float32)
    else:
        labels = rng.integers(0, row.classes, row.batch).astype(np.int32)
    return keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(labels)


def keras_row(row: Row, models: dict, args) -> dict:
    """images/s, FLOPs per step and compile seconds of one row (models: built models by kind/precision)."""
    import keras

    keras.config.set_dtype_policy(POLICIES[row.precision])
    if (row.kind, row.precision) not in models:
        models[row.kind, row.precision] = build_model(row)
    model, loss_fn = models[row.kind, row.precision]
    optimizer = keras.optimizers.Adam(3e-4, epsilon=1e-8)
    optimizer.build(model.trainable_variables)
    x, y = inputs(row)
    start = time.perf_counter()
    make = jax_step if keras.backend.backend() == "jax" else tf_step
    run, flops = make(model, loss_fn, optimizer, x, y)
    compile_s = time.perf_counter() - start
    seconds = timed(run, lambda loss: float(keras.ops.convert_to_numpy(loss)), args.warmup, args.steps)
    return {"images_per_s": row.batch / seconds, "flops": flops, "compile_s": compile_s}


def device_name() -> tuple[str, bool]:
    """(the Keras backend's first device in words, whether it is a GPU)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{device.id} {device.device_kind}", device.platform == "gpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (gpus[0].name if gpus else "CPU"), bool(gpus)


def set_fp32_math(mode: str) -> None:
    """fp32 convolutions and matmuls on tensor cores (tf32) or in full fp32 (ieee), on the Keras side."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if mode == "tf32" else "float32")
    else:
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(mode == "tf32")


COLUMNS = [("model", 28), ("size", 5), ("batch", 5), ("prec", 5), ("keras img/s", 12), ("torch img/s", 12),
           ("ratio", 6), ("GFLOP/img", 9), ("MFU", 6), ("MFU torch", 9), ("compile s", 9)]


def line(cells) -> str:
    """The cells under COLUMNS: the first left-aligned, the others right-aligned."""
    (first, *others), (width, *widths) = [str(c) for c in cells], [w for _, w in COLUMNS]
    return " ".join([f"{first:<{width}}"] + [f"{c:>{w}}" for c, w in zip(others, widths, strict=True)])


def cell(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, float) else str(value or "-")


def print_row(row: Row, keras_result: dict, torch_result: dict, peak_tflops: float | None) -> None:
    """One table line: images/s of both, their ratio, GFLOP per image, MFU of both (where a peak is given),
    Keras' compile seconds."""
    ours, theirs = keras_result.get("images_per_s"), torch_result.get("images_per_s")
    ratio = ours / theirs if isinstance(ours, float) and isinstance(theirs, float) else None
    flops = keras_result.get("flops")
    per_image = flops / row.batch if flops else None

    def mfu(rate):
        if per_image and peak_tflops and isinstance(rate, float):
            return f"{rate * per_image / (peak_tflops * 1e12):.1%}"
        return None

    print(line([f"{row.kind} {row.backbone}", row.size, row.batch, row.precision, cell(ours, ".1f"),
                cell(theirs, ".1f"), cell(ratio, ".2f"), cell(per_image and per_image / 1e9, ".1f"),
                cell(mfu(ours), ""), cell(mfu(theirs), ""), cell(keras_result.get("compile_s"), ".0f")]),
          flush=True)


def peak_tflops(row: Row, args, gpu: bool) -> float | None:
    """The row's peak TFLOP/s on a GPU (bf16, or what the fp32 math runs on); None on a CPU."""
    math = row.precision if row.precision == "bf16" else {"tf32": "tf32", "ieee": "fp32"}[args.fp32_math]
    return args.peaks[math] if gpu else None


def keras_results(rows: list[Row], args, budget: Budget, torch_by_key: dict, gpu: bool) -> dict[str, dict]:
    """Keras' results by row key, measured in priority order while the budget lasts, each printed as done
    (a run stopped from outside keeps the rows it measured)."""
    import keras

    models, results = {}, {}
    for row in rows:
        results[row.key] = budget.measure(row, lambda row: keras_row(row, models, args))
        print_row(row, results[row.key], torch_by_key.get(row.key, {}), peak_tflops(row, args, gpu))
    keras.config.set_dtype_policy("float32")
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    backend = os.environ.setdefault("KERAS_BACKEND", "jax")
    if backend not in BACKENDS:
        print(f"gpu_step: refused: KERAS_BACKEND={backend}; this benchmark times Keras under JAX "
              "(KERAS_BACKEND=jax), or under TensorFlow for a local comparison")
        sys.exit(2)
    if args.cpu_smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    budget = Budget(args.budget_s)
    rows = rows_in_priority_order(args)
    torch_by_key, torch_note = torch_results(rows, args, budget.left() * (0.6 if args.torch_compile else 0.3))

    sys.path.insert(0, str(HERE.parent))  # run from a checkout
    import keras

    set_fp32_math(args.fp32_math)
    device, gpu = device_name()
    print(f"gpu_step: Keras {keras.__version__} on {backend} ({device}); {torch_note}; "
          f"fp32 math {args.fp32_math}; {args.steps} timed steps after {args.warmup} warm-up; losses: "
          "the package's (PyTorch: a port of the same); MFU peaks TFLOP/s "
          + ", ".join(f"{k} {v:g}" for k, v in args.peaks.items()) + ("" if gpu else " (not shown on CPU)"),
          flush=True)
    print(line(name for name, _ in COLUMNS), flush=True)
    results = keras_results(rows, args, budget, torch_by_key, gpu)
    print("\nIn table order:")
    print(line(name for name, _ in COLUMNS))
    for row in sorted(rows, key=lambda r: (r.kind, r.batch, r.precision != "fp32")):
        print_row(row, results[row.key], torch_by_key.get(row.key, {}), peak_tflops(row, args, gpu))
    print("gpu_step: done", flush=True)


if __name__ == "__main__":
    main()
