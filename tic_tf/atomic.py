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


RETIRED = ".retired"


def publish_dir(partial, final):
    """Move a fully written directory into place, replacing an older one at `final`.

    The older one is first renamed to `<final>.retired`; a process killed between the two
    renames leaves it there, and `restore_retired` puts it back, so it is never lost.
    """
    restore_retired(final)
    if not os.path.exists(final):
        os.replace(partial, final)
        return
    retired = final + RETIRED
    os.replace(final, retired)
    os.replace(partial, final)
    shutil.rmtree(retired)


def restore_retired(final):
    """Undo a `publish_dir` cut short: bring `<final>.retired` back if `final` is missing, or
    delete it if the new `final` made it in."""
    retired = final + RETIRED
    if os.path.exists(retired):
        if os.path.exists(final):
            shutil.rmtree(retired)
        else:
            os.replace(retired, final)


def remove_partials(directory):
    """Delete what killed runs left half-written in `directory`, and restore what they had
    retired."""
    for name in os.listdir(directory):
        if name.endswith(RETIRED):
            restore_retired(os.path.join(directory, name[:-len(RETIRED)]))
        elif ".partial-" in name:
            target = os.path.join(directory, name)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.remove(target)
