"""Run by test_backend_jax.py in one fresh process with KERAS_BACKEND=jax and TensorFlow made unimportable.

`python jax_backend_step.py WORK`: reads WORK/plan.json, WORK/inputs.npz and WORK/classifier.weights.h5
(written by the TensorFlow parent), computes the same losses, gradients, ArcFace cosines and classifier
forward passes under JAX, and writes WORK/results.npz for the parent to compare. Prints one JSON line
(the backend, the hpa_tf modules imported, whether TensorFlow was).
"""

import importlib.abc
import json
import sys
from pathlib import Path


class NoTensorFlow(importlib.abc.MetaPathFinder):
    """Makes `import tensorflow` fail as on a machine without it (the GPU image has JAX only)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, NoTensorFlow())

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from hpa_tf import losses  # noqa: E402
from hpa_tf.models import ArcMarginProduct  # noqa: E402
from hpa_tf.models.backbones import backbone  # noqa: E402, F401  (imported: part of what must load)
from hpa_tf.models.classifier import build_classifier  # noqa: E402
from hpa_tf.models.embedder import build_embedder  # noqa: E402, F401

WORK = Path(sys.argv[1])
PLAN = json.loads((WORK / "plan.json").read_text())
INPUTS = dict(np.load(WORK / "inputs.npz"))
OUT: dict[str, np.ndarray] = {}


def loss_checks() -> None:
    """Value and d loss / d logits of every classifier loss on every case, in one compiled function; bf16
    cases stay bf16 on input."""
    functions = {name: getattr(losses, name) for name in PLAN["losses"]}

    @jax.jit
    def values_and_grads(cases):
        return {(case, name): jax.value_and_grad(lambda logits, fn=fn, y=y: fn(y, logits))(z)
                for case, (y, z) in cases.items() for name, fn in functions.items()}

    cases = {case: (INPUTS[f"{case}/y"], jax.numpy.asarray(INPUTS[f"{case}/z"], PLAN["case_dtypes"][case]))
             for case in PLAN["cases"]}
    for (case, name), (value, grad) in values_and_grads(cases).items():
        OUT[f"{case}/{name}/value"] = np.asarray(value)
        OUT[f"{case}/{name}/value_dtype"] = np.array(str(value.dtype))
        OUT[f"{case}/{name}/grad"] = np.asarray(grad.astype("float32"))
        OUT[f"{case}/{name}/grad_dtype"] = np.array(str(grad.dtype))
    edge = PLAN["edge"]
    OUT[f"{edge}/keep"] = np.asarray(losses._hard_mining(INPUTS[f"{edge}/y"], INPUTS[f"{edge}/z"])[2])
    OUT["int07"] = np.asarray(losses._python_int_07(jax.numpy.asarray(INPUTS["int07/n"], "int32")))


def arcface_checks() -> None:
    """ArcMarginProduct's cosines (the parent's weight) and ArcFace's value and gradient through it."""
    features, labels = INPUTS["arc/features"], INPUTS["arc/labels"]
    layer = ArcMarginProduct(int(INPUTS["arc/weight"].shape[0]))
    layer.build(features.shape)
    layer.set_weights([INPUTS["arc/weight"]])

    @jax.jit
    def through_layer(f):
        return jax.value_and_grad(lambda f: losses.arcface_loss(labels, layer(f)))(f), layer(f)

    (OUT["arc/value"], OUT["arc/grad"]), OUT["arc/cosine"] = jax.tree.map(np.asarray, through_layer(features))
    arcface = jax.jit(jax.value_and_grad(losses.arcface_loss, argnums=1))
    for case in PLAN["arc_cases"]:
        value, grad = arcface(INPUTS[f"{case}/labels"], INPUTS[f"{case}/cosine"])
        OUT[f"{case}/value"], OUT[f"{case}/grad"] = np.asarray(value), np.asarray(grad)


def classifier_checks() -> None:
    """The small classifier with the parent's weights, through stateless_call under jax.jit: in inference
    and in training mode, the logits, the loss and its gradient over every trainable weight, and (training)
    the BatchNorm statistics the forward pass updates."""
    model = build_classifier(PLAN["backbone"], weights=None, dropout=0.0)
    model.load_weights(WORK / "classifier.weights.h5")
    images, labels = INPUTS["clf/images"], INPUTS["clf/labels"]

    def loss_fn(trainable, non_trainable, training):
        logits, updated = model.stateless_call(trainable, non_trainable, images, training=training)
        return losses.classifier_loss(labels, logits), (logits, updated)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    both_modes = jax.jit(lambda t, n: {mode: grad_fn(t, n, mode == "train") for mode in ("infer", "train")})
    results = both_modes([v.value for v in model.trainable_variables],
                         [v.value for v in model.non_trainable_variables])
    for mode, ((value, (logits, updated)), grads) in results.items():
        OUT[f"clf/{mode}/loss"], OUT[f"clf/{mode}/logits"] = np.asarray(value), np.asarray(logits)
        OUT.update({f"clf/{mode}/grad/{i}": np.asarray(grad) for i, grad in enumerate(grads)})
        if mode == "train":
            OUT.update({f"clf/train/updated/{i}": np.asarray(v) for i, v in enumerate(updated)})
    OUT["clf/trainable_paths"] = np.array([v.path for v in model.trainable_variables])


def main() -> None:
    loss_checks()
    arcface_checks()
    classifier_checks()
    np.savez(WORK / "results.npz", **OUT)
    print(json.dumps({"backend": keras.backend.backend(), "tensorflow_imported": "tensorflow" in sys.modules,
                      "modules": sorted(m for m in sys.modules if m.startswith("hpa_tf"))}))


if __name__ == "__main__":
    main()
