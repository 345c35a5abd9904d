"""`fit` and `evaluate` for MultiWorkerMirroredStrategy, which Keras 3's own cannot run.

Keras 3 (checked with 3.15) averages every step's scalar logs with `strategy.reduce(..., axis=0)`
under that strategy, which fails for scalars (keras-team/keras#20585). These loops run the
model's own `train_step` / `test_step` in `strategy.run` and read the metrics in cross-replica
context, where their sync-on-read variables are summed over all workers: the logs are those of
the global batch, exactly as on one device. The callbacks see the calls `model.fit` makes.
"""
import keras

from tic_tf.compiled import cached, function


def _distributed_step(model, strategy, name):
    """model.train_step or model.test_step over the replicas, compiled once per model."""
    step = getattr(model, name)

    def build():
        @function
        def run(batch):
            strategy.run(step, args=(batch,))
            return model.get_metrics_result()  # cross-replica: summed over every worker

        return run

    return cached(model, f"multi_worker_{name}", build)


def _to_floats(logs):
    return {name: float(value) for name, value in logs.items()}


def evaluate(model, strategy, dataset):
    """Loss and compiled metrics of `model` over all of `dataset` (every worker must call it)."""
    test = _distributed_step(model, strategy, "test_step")
    model.reset_metrics()
    logs = {}
    for batch in strategy.experimental_distribute_dataset(dataset):
        logs = test(batch)
    return _to_floats(logs)


def fit(model, strategy, dataset, epochs, initial_epoch, steps_per_epoch, callbacks,
        validation_data=None, validation_freq=1, verbose=2):
    """Train like `model.fit(dataset, epochs=..., initial_epoch=..., steps_per_epoch=...)`."""
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose, epochs=epochs,
        steps=steps_per_epoch, model=model)
    model.optimizer.build(model.trainable_variables)  # outside the replicas, once
    train = _distributed_step(model, strategy, "train_step")
    batches = iter(strategy.experimental_distribute_dataset(dataset))
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            logs = _to_floats(train(next(batches)))
            callbacks.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        if validation_data is not None and (epoch + 1) % validation_freq == 0:
            scores = evaluate(model, strategy, validation_data)
            epoch_logs.update({f"val_{name}": value for name, value in scores.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
