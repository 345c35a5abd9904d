"""What tic_tf reads of the CPU and of TensorFlow's kernels, against known answers."""
import os
import warnings

import pytest
import tensorflow as tf

from tic_tf import kernels
from tic_tf.models import set_precision

ZEN4 = "fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16"
AVX2_ONLY = "fpu sse2 avx avx2 fma"


@pytest.mark.parametrize("flags, native", [(ZEN4, True), (AVX2_ONLY, False),
                                           ("avx2 amx_tile amx_bf16", True), (None, None)])
def test_native_bfloat16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(kernels, "_cpuinfo", lambda field: flags if field == "flags" else None)
    monkeypatch.setattr(kernels.tf.config, "list_physical_devices", lambda kind: [])
    assert kernels.native_bfloat16() is native


@pytest.mark.parametrize("native, warned", [(False, True), (True, False), (None, False)])
def test_bfloat16_warns_only_where_the_cpu_emulates_it(monkeypatch, native, warned):
    monkeypatch.setattr("tic_tf.models.native_bfloat16", lambda: native)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            set_precision("bfloat16")
    finally:
        set_precision("none")
    messages = [str(w.message) for w in caught if "emulated" in str(w.message)]
    assert messages == (["bfloat16 on this CPU (no AVX512-BF16, no AMX) is emulated by "
                         "TensorFlow and slower than float32; use float32 here (precision "
                         "'none', --mixed_precision=none)."] if warned else [])


def test_the_report_names_the_cpu_flags_that_decide_the_kernels(monkeypatch):
    info = {"flags": ZEN4 + " sse4_2", "model name": "AMD EPYC 9R45"}
    monkeypatch.setattr(kernels, "_cpuinfo", info.get)
    monkeypatch.setenv(kernels.ONEDNN_VARIABLE, "0")
    report = kernels.report()
    assert report["cpu"] == "AMD EPYC 9R45" and report["onednn_opts"] == "0"
    assert report["cpu_flags"] == ["avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"]
    assert set(report["grouped_filter_gradient"]) == {"float32", "bfloat16"}
    assert report["eigen_convolutions"] == kernels.eigen_convolutions()


@pytest.mark.numerical
@pytest.mark.skipif(os.environ.get(kernels.ONEDNN_VARIABLE) not in ("0", "1"),
                    reason="TF_ENABLE_ONEDNN_OPTS unset: TensorFlow picks the kernels by CPU")
def test_eigen_convolutions_are_found_exactly_where_onednn_is_off():
    """On a CPU the README's test command runs the suite with oneDNN on and off."""
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("convolutions run on the GPU")
    assert kernels.eigen_convolutions() == (os.environ[kernels.ONEDNN_VARIABLE] == "0")
