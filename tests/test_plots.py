"""The plotting module draws without touching global matplotlib state."""
import subprocess
import sys

from conftest import REPO


def test_plotting_does_not_go_through_pyplot():
    """pyplot would pick a global backend and keep figures open; Figure alone does neither."""
    script = ("import sys; import numpy as np; from tic_tf import plots; "
              "png = plots.heatmap(np.eye(3), range(3), range(3)); "
              "assert png[:8] == b'\\x89PNG\\r\\n\\x1a\\n', png[:8]; "
              "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
