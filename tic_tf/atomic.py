"""Atomic writes: outputs appear complete under their final name, or not at all; a write
that finds the disk full removes what it wrote and says so in one UserError."""
import contextlib
import errno
import json
import os
import shutil

from tic_tf.errors import UserError

# A full disk, a full quota, the process's file-size limit.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
RESUME_ADVICE = ("What was written before is intact: make room and run the same command again "
                 "to resume.")


def partial_path(path):
    """A temporary sibling of `path`, unique to this process."""
    return f"{path}.partial-{os.getpid()}"


def out_of_space(error):
    """The reason (e.g. "No space left on device") if `error`, an OSError or TensorFlow's
    error for a failed write, is one of OUT_OF_SPACE, else None."""
    if isinstance(error, OSError):
        return os.strerror(error.errno) if error.errno in OUT_OF_SPACE else None
    reasons = [os.strerror(code) for code in OUT_OF_SPACE if os.strerror(code) in str(error)]
    return reasons[0] if reasons else None


@contextlib.contextmanager
def reporting_full_disk(path, needed_bytes, undo):
    """Around a write of about `needed_bytes` that becomes `path`: if it runs out of space,
    call `undo` (remove what was written, freeing its space) and raise one UserError naming
    the file, the space needed and the space free. Other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        reason = out_of_space(error)
        if reason is None:
            raise
        undo()
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        free = shutil.disk_usage(parent).free
        raise UserError(f"Could not write {path}: {reason} (it needs about "
                        f"{_size(needed_bytes)}; {_size(free)} free on that disk). "
                        + RESUME_ADVICE) from error


def _size(count):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def write_text(path, text):
    write_bytes(path, text.encode())


def write_bytes(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = partial_path(path)
    with reporting_full_disk(path, len(data), lambda: _remove(partial)):
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(partial, path)


def append_line(path, line):
    """Append `line` and a newline to `path`; a failed append is cut back off, so the file
    never ends in a partial line."""
    data = (line + "\n").encode()
    size = os.path.getsize(path) if os.path.exists(path) else 0

    def cut_back():
        with open(path, "r+b") as handle:
            handle.truncate(size)

    with reporting_full_disk(path, len(data), cut_back):
        with open(path, "ab") as handle:
            handle.write(data)
            handle.flush()


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
            _remove(os.path.join(directory, name))
