"""The README's Python quickstart, executed verbatim from the README's text so that it cannot rot."""
import os
import re

import numpy as np

from conftest import REPO


def quickstart_code():
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme.split("### Python quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(quickstart_code(), "README.md (Python quickstart)", "exec"), namespace)
    fisher, model, arrays = namespace["fisher"], namespace["model"], namespace["arrays"]
    assert len(fisher.values) == 4
    assert np.isclose(fisher.centroid,  # Eq. 7 of the printed I_t
                      np.sum(np.arange(1, 5) * fisher.values) / np.sum(fisher.values), rtol=1e-12)
    # The accuracy it prints is the mean-logit argmax on the 360 test digits, recomputed here.
    logits = model(arrays.x_test / np.float32(255), training=False).numpy()
    assert namespace["accuracy"] == np.mean(logits.sum(axis=1).argmax(axis=1) == arrays.y_test)
    assert (tmp_path / "fisher.png").read_bytes()[:4] == b"\x89PNG"
    assert "centroid" in capsys.readouterr().out
