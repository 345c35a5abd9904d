"""Settings declared once, for Python and for the command line.

A library entry point takes one config: a frozen dataclass whose fields are declared with
`option` (default, help text, allowed values). The commands (`tic_tf.cli`) turn the same
declarations into flags and the parsed flags back into the config, so a setting has one name,
one default and one help text whether it comes from Python or a shell. A field holding another
config (such as `DataConfig`) contributes its fields as flags of their own names.
"""
import dataclasses
import os

from tic_tf.errors import UserError


def option(default, help, *, choices=None, kind=None, parse=None, writes=None):
    """A config field. `kind` (int, float, str, bool or list) is needed only when `default`
    is None; a list-valued option's default is a tuple. `parse` turns a flag's value (for a
    list, its strings) into the field's value and raises UserError on bad input. `writes`
    ("directory" or "file") marks a path the entry point writes, checked by `check_paths`."""
    kind = kind or (list if isinstance(default, tuple) else type(default))
    metadata = {"help": help, "choices": choices, "kind": kind, "parse": parse,
                "writes": writes}
    return dataclasses.field(default=default, metadata=metadata)


def nested(config_class):
    """A field holding a whole config, e.g. `data: DataConfig = nested(DataConfig)`."""
    return dataclasses.field(default_factory=config_class)


def flat_dict(config):
    """Every setting of `config` by name, nested configs flattened (JSON-ready)."""
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            values.update(flat_dict(value))
        else:
            values[field.name] = list(value) if isinstance(value, tuple) else value
    return values


def check_choices(config):
    """UserError for a field whose value (or, for a list, one of whose values) is not among
    its declared choices: library callers pass plain values, and list flags are unchecked."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            check_choices(value)
            continue
        choices = field.metadata.get("choices")
        if choices is None:
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise UserError(f"--{field.name} takes {', '.join(map(str, choices))}; got "
                            f"{', '.join(map(str, unknown))}.")


def check_paths(config):
    """UserError for a path `config` would write but cannot: an existing file where a
    directory goes (or the reverse), a parent that is a file, no permission. Checked when the
    config is made, so that a bad path fails before any work and leaves nothing behind."""
    for field in dataclasses.fields(config):
        kind, path = field.metadata.get("writes"), getattr(config, field.name)
        if kind is not None and path:
            check_writable(field.name, path, kind)


def check_writable(name, path, kind):
    """UserError naming flag `name` if `path` cannot be written as a `kind`."""
    problem = _unwritable(path, kind)
    if problem:
        raise UserError(f"--{name}={path} {problem}")


def _unwritable(path, kind):
    """Why `path` cannot be written as a `kind` ("directory" or "file"), or None."""
    if os.path.lexists(path) and os.path.isdir(path) != (kind == "directory"):
        other = "file" if kind == "directory" else "directory"
        return f"is a {other}, not a {kind}; pass a path for a {kind}."
    # Files are written beside themselves and renamed (tic_tf.atomic): their parent counts.
    existing = os.path.abspath(path if kind == "directory" else os.path.dirname(path) or ".")
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"cannot be created: {existing} is a file; choose another path."
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: no permission to write in {existing}; choose another path."
    return None


def require(condition, message):
    """UserError(`message`) unless `condition`: validation that library calls share."""
    if not condition:
        raise UserError(message)


def integers(name, minimum=None):
    """A `parse` for list options of integers, e.g. --lr_milestones=150,225."""
    def parse(values):
        try:
            parsed = tuple(int(v) for v in values)
        except ValueError:
            raise UserError(f"--{name} takes comma-separated integers, got "
                            f"{','.join(values)!r}.") from None
        if minimum is not None and any(n < minimum for n in parsed):
            raise UserError(f"--{name} values must be at least {minimum}.")
        return parsed
    return parse


def numbers(name):
    """A `parse` for list options of real numbers, e.g. --attack_surrogates=1.57,6.28."""
    def parse(values):
        try:
            return tuple(float(v) for v in values)
        except ValueError:
            raise UserError(f"--{name} takes comma-separated numbers, got "
                            f"{','.join(values)!r}.") from None
    return parse


# Settings that several entry points share, each declared once.

def output_dir(what):
    return option(None, f"Where {what} go.", kind=str, writes="directory")


def seed(what):
    return option(0, f"Seed for {what}.")


def xla(default, why=""):
    return option(default, "Compile with XLA (jit_compile)." + (f" {why}" if why else ""))


def eval_samples():
    return option(None, "Test images to use (default all).", kind=int)


def train_examples(note=""):
    return option(0, "Train on the first this many training examples only (0: all)" + note
                  + ".")


def augment(note=""):
    return option(True, "Random crop (pad 4) and, where the data set allows, horizontal flip "
                  "of training images" + note + ".")


def energy_table():
    return option("45nm", "Picojoules per operation for energy: a named table (45nm: 0.9 per "
                  "accumulate, 4.6 per multiply-accumulate) or "
                  "accumulate=PJ,multiply_accumulate=PJ.")


def run_timesteps():
    return option(None, "Run the checkpoints at this T (default: the T they were trained "
                  "with).", kind=int)


def check_positive(config, *names):
    for name in names:
        value = getattr(config, name)
        require(value is None or value >= 1, f"--{name} must be at least 1, got {value}.")
