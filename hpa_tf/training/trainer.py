"""A Keras model wrapper whose training step computes batch-level losses on the global batch.

The reference computed its loss on the full batch gathered from its GPUs (spec 6.2): Lovasz and
hard-negative mining depend on the whole batch. Under a distribution strategy each replica here gathers
the logits and labels of all replicas, computes the same global loss, and backpropagates loss / replicas
(the all-gather's gradient sums the replicas' contributions back to each slice). The gradients are then
summed across replicas once, clipped by their global norm (spec 8.1: the norm of the whole gradient, not
of each replica's part, which is what Keras' own `global_clipnorm` would clip under a strategy) and applied.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def pre_reduced(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Make `optimizer` take gradients as already summed across replicas (GlobalBatchTrainer sums them
    before clipping); without this Keras would sum them a second time."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's wrapped optimizer
    if not hasattr(inner, "_all_reduce_sum_gradients"):
        raise RuntimeError("this Keras version's optimizer has no _all_reduce_sum_gradients to bypass; "
                           "GlobalBatchTrainer would sum gradients twice")
    inner._all_reduce_sum_gradients = list
    return optimizer


def _loss_scale(optimizer: keras.optimizers.Optimizer) -> tf.Tensor:
    """The factor by which `optimizer.scale_loss` multiplies the loss (1 without loss scaling)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return tf.cast(optimizer.dynamic_scale, tf.float32)
    return tf.constant(float(optimizer.loss_scale_factor or 1.0))


def _gather(tensor: tf.Tensor, context) -> tf.Tensor:
    """The concatenation of a [B, C] `tensor` over all replicas, in replica order (itself with one).

    Built as a SUM all-reduce of each replica's slice placed in its own slot of a zero [replicas, B, C]
    stack: ReplicaContext.all_gather fails inside Keras' compiled step under MultiWorkerMirroredStrategy
    ("destinations can not be empty", TF 2.20), while all_reduce works everywhere and its gradient is the
    all-reduced upstream gradient, so each replica's slice gets the sum of every replica's contribution."""
    replicas = context.num_replicas_in_sync
    if replicas == 1:
        return tensor
    slot = tf.one_hot(context.replica_id_in_sync_group, replicas, dtype=tensor.dtype)
    stacked = slot[:, None, None] * tensor[None]
    return tf.reshape(context.all_reduce(tf.distribute.ReduceOp.SUM, stacked), [-1, tensor.shape[-1]])


def _step_logs(metrics) -> dict:
    """Metric results as a step's outputs. Under MultiWorkerMirroredStrategy Keras 3 averages step
    outputs across workers along axis 0, which fails on scalars (tensorflow/tensorflow#72388): there
    they are returned as [1] tensors. Epoch logs come from the metrics themselves either way."""
    results = {metric.name: metric.result() for metric in metrics}
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        results = {name: tf.reshape(value, [1]) for name, value in results.items()}
    return results


class GlobalBatchTrainer(keras.Model):
    """Trains `net` with `loss_fn(y_true, logits)` computed on the global batch, gradients clipped to a
    global norm of `clipnorm`; evaluation updates `eval_metrics` (y_true, logits) on every batch.

    gather=False computes the loss on each replica's batch instead: right for a per-sample mean such as
    ArcFace (the mean of equal-sized replica means is the global mean) and cheaper for wide outputs.
    `prepare` turns a batch's inputs into the network's images on the device (on-device augmentation)."""

    def __init__(self, net: keras.Model, loss_fn, clipnorm: float | None = 1.0, eval_metrics=(),
                 gather: bool = True, prepare=None, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.prepare = prepare or (lambda inputs: inputs)
        self.loss_fn = loss_fn
        self.clipnorm = clipnorm
        self.gather = gather
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.eval_metrics = list(eval_metrics)
        self.built = net.built  # the wrapper adds no weights of its own; BackupAndRestore needs it built

    def call(self, images, training=False):
        return self.net(images, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, *self.eval_metrics]

    def compile(self, optimizer, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        pre_reduced(self.optimizer)  # compile may have wrapped it in a LossScaleOptimizer

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras probes a first batch here to build the model, averaging it across replicas, which fails
        under MultiWorkerMirroredStrategy (Keras 3.15). The network is built already; only the
        optimizer's slots remain, created in the strategy's scope."""
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.net.trainable_variables)

    def global_gradients(self, images, labels):
        """(global loss, gradients summed over replicas and clipped) for one step; replica context."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        variables = self.net.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.net(images, training=True)
            logits = tf.cast(logits, tf.float32)
            if self.gather:
                loss = self.loss_fn(_gather(labels, context), _gather(logits, context))
            else:  # a per-sample mean: the replicas' summed gradients of loss / replicas are the global one
                loss = self.loss_fn(labels, logits)
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, variables)
        if replicas > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if self.clipnorm:
            grads, _ = tf.clip_by_global_norm(grads, self.clipnorm * _loss_scale(self.optimizer))
        return loss, grads

    def train_step(self, data):
        inputs, labels = data
        images = self.prepare(inputs)
        loss, grads = self.global_gradients(images, labels)
        self.optimizer.apply(grads, self.net.trainable_variables)
        self.loss_tracker.update_state(loss)
        return _step_logs([self.loss_tracker])

    def test_step(self, data):
        inputs, labels = data
        logits = self.net(self.prepare(inputs), training=False)
        self.loss_tracker.update_state(self.loss_fn(labels, logits))
        for metric in self.eval_metrics:
            metric.update_state(labels, logits)
        return _step_logs(self.metrics)

    def predict_step(self, data):
        inputs = data[0] if isinstance(data, tuple) else data
        return self.net(self.prepare(inputs), training=False)
