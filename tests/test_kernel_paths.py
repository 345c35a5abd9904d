"""The exact Fisher estimator gives the same values whichever kernel library TensorFlow runs:
oneDNN (whose grouped convolution it uses) or Eigen (where it takes image patches instead).

Directly, in one process each, for one case per architecture, each in a batch-norm mode and
kind of statistics that test_fisher does not compare with per-sample gradients. The other
combinations are compared with per-sample gradients under both kernel libraries, as the README's
test command runs the numerical tests a second time with oneDNN off."""
import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO

FISHER_VALUES = """
import json
import numpy as np
import keras
from tic_tf.fisher import temporal_fisher
from tic_tf.models import build_model

rng = np.random.default_rng(0)
images = rng.random((4, 28, 28, 1), dtype=np.float32)
labels = rng.integers(0, 5, 4).astype(np.int32)
cases = [("vgg16", "bntt", "moving"), ("alexnet", "shared", "batch"),
         ("resnet19", "time_specific", "moving")]
values = {}
for arch, mode, statistics in cases:
    keras.utils.set_random_seed(1)
    model = build_model(arch, 5, 3, (28, 28, 1), width=1 / 16, batch_norm=mode)
    for weight in model.weights:  # statistics and scales off their initial values
        if weight.path.endswith(("gamma", "moving_variance")):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape))
        elif weight.path.endswith(("beta", "moving_mean")):
            weight.assign(rng.uniform(0.2, 0.8, weight.shape))
    result = temporal_fisher(model, (images, labels), 4, batch_size=4, bn_statistics=statistics)
    values[f"{arch} {mode} {statistics}"] = result.values.tolist()
print(json.dumps(values))
"""


def fisher_values(onednn):
    """`FISHER_VALUES` in a process with oneDNN's kernels on or off, started now."""
    return subprocess.Popen([sys.executable, "-c", FISHER_VALUES], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn})


def test_fisher_values_are_the_same_with_onednn_on_and_off():
    runs = {onednn: fisher_values(onednn) for onednn in ("0", "1")}  # both at once
    values = {}
    for onednn, run in runs.items():
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-2000:]
        values[onednn] = json.loads(out.strip().splitlines()[-1])
    assert len(values["0"]) == 3 and values["0"].keys() == values["1"].keys()
    for case, off in values["0"].items():
        # Float32 sums in other orders, and another route for most convolutions.
        np.testing.assert_allclose(off, values["1"][case], rtol=1e-4, err_msg=case)
        assert min(off) > 0, case  # a real measurement, not zeros on both sides
