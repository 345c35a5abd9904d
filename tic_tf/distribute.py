"""tf.distribute strategies for the training tools: --strategy=default|mirrored|multi_worker|tpu.

`--batch_size` is always the global batch: each of the strategy's replicas computes on
batch_size / replicas examples of every step and the gradients are summed across replicas,
so a run's training curve does not depend on the number of devices (batch-norm statistics are
synchronised across replicas: see `tic_tf.models.blocks`). Every worker of a multi-worker job
runs the same command; only the chief writes into the run's directories (`output_dir`).
"""
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

import tensorflow as tf
from tic_tf import multi_worker, run_lock
from tic_tf.errors import UserError
from tic_tf.options import check_choices, option
from tic_tf.summaries import release_all

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """Which tf.distribute strategy a training runs under."""
    strategy: str = option("default", "default: one device; mirrored: all GPUs of this host; "
                           "multi_worker: MultiWorkerMirroredStrategy over the hosts in "
                           "TF_CONFIG (run the same command on each); tpu: TPUStrategy.",
                           choices=STRATEGIES)
    tpu: str = option("", "TPU name or grpc:// address for --strategy=tpu ('' finds the local "
                      "TPU or the one set up by the environment).")

    def __post_init__(self):
        check_choices(self)


def make_strategy(name, tpu=""):
    """The tf.distribute strategy called `name`; create it before any other TensorFlow work
    (multi_worker configures the process's collective runtime)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as error:
            raise UserError(f"--strategy=tpu found no TPU{f' at {tpu!r}' if tpu else ''} "
                            f"({str(error).splitlines()[0]}); run on a TPU VM or pass --tpu="
                            "NAME_OR_ADDRESS.") from error
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"Unknown --strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def _check_tf_config():
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
                        "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
                        "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' "
                        "on the first host (index 1 on the second).")
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task_type, index = config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG is not valid ({type(error).__name__}: {error}); it needs "
                        "cluster.worker (a list of host:port) and task.type / task.index.") \
            from error
    members = config["cluster"].get(task_type)
    if not isinstance(workers, list) or not members or not 0 <= index < len(members):
        raise UserError(f"TF_CONFIG's task {task_type}:{index} is not in its cluster "
                        f"{config['cluster']}.")


def is_multi_worker(strategy):
    """Whether `strategy` spans several processes that must take every step together."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def fit(model, strategy, dataset, epochs, initial_epoch, steps_per_epoch, **options):
    """`model.fit(dataset, ...)` in the strategy's scope, through `tic_tf.multi_worker` where
    Keras' own cannot run; the callbacks' writers and signal handlers are released however it
    ends (Keras' on_train_end does not run when training raises)."""
    try:
        with strategy.scope():
            # Slots created in the first step would make TensorFlow trace it twice.
            model.optimizer.build(model.trainable_variables)
            if is_multi_worker(strategy):
                multi_worker.fit(model, strategy, dataset, epochs, initial_epoch,
                                 steps_per_epoch, **options)
            else:
                # The dataset is shuffled already (statelessly, per epoch): shuffle=False.
                model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch,
                          steps_per_epoch=steps_per_epoch, shuffle=False, **options)
    finally:
        release_all(options.get("callbacks", ()))


def evaluate(model, strategy, dataset):
    """`model.evaluate(dataset)` as a dict of floats, under any strategy."""
    if is_multi_worker(strategy):
        return multi_worker.evaluate(model, strategy, dataset)
    return model.evaluate(dataset, verbose=0, return_dict=True)


def is_chief(strategy):
    """Whether this process writes the run's files: always, unless it is a non-chief worker."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.TPUStrategy) or resolver is None:
        return True  # one client process
    if not resolver.task_type or resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def check_batch_size(strategy, batch_size):
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(f"--batch_size {batch_size} (the global batch) does not split evenly "
                        f"over {replicas} replicas; use a multiple of {replicas}.")


@contextlib.contextmanager
def output_dir(strategy, path):
    """Yields where this process writes: `path` on the chief, which holds its lock (one
    writer per run directory: `tic_tf.run_lock`); on other workers a temporary directory
    removed at exit. Non-chief workers still save (checkpoints may run collectives, so every
    worker must take part), but their copies are thrown away."""
    if is_chief(strategy):
        with run_lock.holding(path):
            yield path
        return
    scratch = tempfile.mkdtemp(prefix="tic_tf-worker-")
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
