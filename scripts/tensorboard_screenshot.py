r"""Screenshots of a run's TensorBoard as a user sees it, taken in headless Chromium (by hand,
not in CI; needs a `chromium` binary, e.g. Debian's `apt-get install chromium`).

    python scripts/tensorboard_screenshot.py --logdir=runs/quick_cpu/tensorboard \
        --output_dir=/tmp/tensorboard_shots

Starts `tensorboard` on a free localhost port, waits until it serves the run's scalars, then
saves one PNG per dashboard (scalars, images, time series) into --output_dir.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from absl import app, flags

flags.DEFINE_string("logdir", None, "TensorBoard log directory of a run.", required=True)
flags.DEFINE_string("output_dir", "tensorboard_screenshots", "Where the PNGs go.")
flags.DEFINE_string("chromium", None, "Chromium binary (default: chromium on the PATH).")
flags.DEFINE_list("dashboards", ["scalars", "images", "timeseries"], "Dashboards to capture.")
flags.DEFINE_string("tag_filter", None, "Regular expression of the tags to show (TensorBoard's "
                    "tag filter, e.g. 'fisher|test'); default all.")
flags.DEFINE_string("window_size", "1600,1400", "Browser window width,height in pixels.")
flags.DEFINE_integer("render_ms", 15000, "Time the page gets to load its data and draw.")
FLAGS = flags.FLAGS

# Without these, Chromium keeps trying to reach Google's services on a closed network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_scalars(port, server, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"error: tensorboard exited with status {server.returncode}.")
        try:
            url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
            with urllib.request.urlopen(url, timeout=5) as response:
                if any(json.loads(response.read()).values()):
                    return
        except OSError:
            pass
        time.sleep(1)
    sys.exit(f"error: tensorboard served no scalars from {FLAGS.logdir} within {timeout} s; "
             "is it a run's tensorboard/ directory?")


def url(port, dashboard):
    """The dashboard's address, with the tag filter in TensorBoard's URL fragment."""
    query = f"&tagFilter={urllib.parse.quote(FLAGS.tag_filter)}" if FLAGS.tag_filter else ""
    return f"http://127.0.0.1:{port}/#{dashboard}{query}"


def main(argv):
    del argv
    chromium = FLAGS.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("error: no chromium binary found; install one (Debian: apt-get install "
                 "chromium) or pass --chromium=PATH.")
    if not os.path.isdir(FLAGS.logdir):
        sys.exit(f"error: --logdir {FLAGS.logdir} is not a directory.")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={FLAGS.logdir}",
         "--host=127.0.0.1", f"--port={port}", "--load_fast=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_scalars(port, server)
        for dashboard in FLAGS.dashboards:
            path = os.path.abspath(os.path.join(FLAGS.output_dir, f"{dashboard}.png"))
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                f"--window-size={FLAGS.window_size}",
                                f"--virtual-time-budget={FLAGS.render_ms}",
                                f"--screenshot={path}", url(port, dashboard)],
                               check=True, capture_output=True, timeout=300)
            print(f"Wrote {path}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    app.run(main)
