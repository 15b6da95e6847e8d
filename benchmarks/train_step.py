"""Training throughput of the classifier: the Keras fit path (GlobalBatchTrainer, what
train_classifier.py runs) vs a hand-written tf.function step, each with and without XLA (--jit).

Images are random tensors already in memory, so the figure is the model step alone (the input pipeline
has its own benchmark). Also prints the model's forward FLOPs per image, so that MFU can be read off:
MFU = images/s x 3 x forward FLOPs / peak FLOP/s (backward ~ 2x forward).

    python benchmarks/train_step.py                       # DenseNet121, crop 128, batch 16, CPU
    python benchmarks/train_step.py --crop 512 --batch 32 --precision bf16 --variants fit-jit step-jit

Last line: `train_images_per_s: <value>` of the Keras fit path without XLA (the default training path).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

VARIANTS = ("fit", "step", "fit-jit", "step-jit")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--crop", type=int, default=128, help="square input side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, interleaved across variants")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--intra-op", type=int, default=0, help="TF intra-op threads (0: TF's default)")
    parser.add_argument("--inter-op", type=int, default=0, help="TF inter-op threads (0: TF's default)")
    return parser.parse_args()


def forward_flops(model, crop: int) -> float:
    """Floating-point operations of one image's forward pass, counted by TF's graph profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, crop, crop, 4], tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


class Variant:
    """One way of running training steps; `run(n)` runs n steps and blocks until they are done."""

    def __init__(self, name: str, args, images, labels):
        import keras
        import tensorflow as tf

        from hpa_tf.losses import classifier_loss
        from hpa_tf.models.classifier import build_classifier
        from hpa_tf.training.trainer import GlobalBatchTrainer

        self.name = name
        jit = name.endswith("-jit")
        net = build_classifier(args.backbone, weights=None)
        if name.startswith("fit"):
            trainer = GlobalBatchTrainer(net, classifier_loss, clipnorm=1.0)
            trainer.compile(keras.optimizers.Adam(3e-4, epsilon=1e-8), jit_compile=jit)
            dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
            self.run = lambda n: trainer.fit(dataset, steps_per_epoch=n, epochs=1, verbose=0)
        else:
            optimizer = keras.optimizers.Adam(3e-4, epsilon=1e-8)

            @tf.function(jit_compile=jit)
            def step(x, y):
                with tf.GradientTape() as tape:
                    loss = classifier_loss(y, net(x, training=True))
                grads, _ = tf.clip_by_global_norm(tape.gradient(loss, net.trainable_variables), 1.0)
                optimizer.apply(grads, net.trainable_variables)
                return loss

            def run(n):
                for _ in range(n):
                    loss = step(images, labels)
                float(loss)  # wait for the last step

            self.run = run
        self.model = net


def main() -> None:
    args = parse_args()
    import keras
    import tensorflow as tf

    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    keras.config.set_dtype_policy({"fp32": "float32", "bf16": "mixed_bfloat16",
                                   "fp16": "mixed_float16"}[args.precision])
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((args.batch, args.crop, args.crop, 4), dtype=np.float32))
    labels = tf.constant((rng.random((args.batch, 28)) < 0.1).astype(np.float32))
    devices = [d.name for d in tf.config.list_logical_devices()]
    threads = (tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
    print(f"{args.backbone} crop {args.crop} batch {args.batch} {args.precision} on {devices}; "
          f"TF {tf.__version__}, intra/inter-op threads {threads[0]}/{threads[1]} (0: TF default)",
          flush=True)

    variants = []
    for name in args.variants:
        start = time.perf_counter()
        variant = Variant(name, args, images, labels)
        variant.run(1 + args.warmup)  # compile + warm up
        print(f"  {name}: built and compiled in {time.perf_counter() - start:.1f} s", flush=True)
        variants.append(variant)
    flops = forward_flops(variants[0].model, args.crop)

    seconds = {v.name: [] for v in variants}
    for _ in range(args.rounds):  # interleaved, so machine noise hits every variant alike
        for variant in variants:
            start = time.perf_counter()
            variant.run(args.steps)
            seconds[variant.name].append((time.perf_counter() - start) / (args.steps * args.batch))
    rates = {name: 1.0 / min(per_image) for name, per_image in seconds.items()}
    reference = rates[variants[0].name]
    print(f"forward GFLOPs per image: {flops / 1e9:.3f} (training ~3x); MFU = images/s x "
          f"{3 * flops / 1e9:.3f} GFLOP / peak GFLOP/s")
    print(f"{'variant':10s} {'images/s':>9s} {'vs ' + variants[0].name:>10s}")
    for name, rate in rates.items():
        print(f"{name:10s} {rate:9.2f} {rate / reference:9.2f}x")
    print(f"train_images_per_s: {rates.get('fit', reference):.2f}")


if __name__ == "__main__":
    main()
