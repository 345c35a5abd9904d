"""Atomic writes: outputs appear complete under their final name, or not at all."""
import json
import os
import shutil


def partial_path(path):
    """A temporary sibling of `path`, unique to this process."""
    return f"{path}.partial-{os.getpid()}"


def write_text(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = partial_path(path)
    with open(partial, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def publish_dir(partial, final):
    """Move a fully written directory into place, replacing an older one at `final`."""
    if os.path.exists(final):
        retired = partial_path(final) + ".old"
        os.replace(final, retired)
        os.replace(partial, final)
        shutil.rmtree(retired)
    else:
        os.replace(partial, final)


def remove_partials(directory):
    """Delete what killed runs left half-written in `directory`."""
    for name in os.listdir(directory):
        if ".partial-" in name:
            target = os.path.join(directory, name)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.remove(target)
