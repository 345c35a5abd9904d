"""What every command shares: flags from a config, error reporting, quiet start-up.

A command is `cli.run(Config, function)`: it defines one flag per field of `Config`, parses
the command line into a `Config` and calls `function(config)`.
"""
import dataclasses
import os
import sys

# Set before TensorFlow is first imported, and only by the commands (the library leaves the
# process alone); a value the user set wins. TensorFlow's C++ start-up chatter (CPU features)
# buries the tools' own output. oneDNN's CPU kernels: TensorFlow turns them on by itself only
# on CPUs with AVX512-VNNI/BF16 or AMX, though they are faster on AVX2 ones too (docs/
# performance.md).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app, flags, logging  # noqa: E402  (after the environment is set)

from tic_tf.atomic import RESUME_ADVICE, out_of_space  # noqa: E402
from tic_tf.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS


def run(config_class, function, required=(), aliases=None, argv=None):
    """Parse the command line into `config_class` and call `function(config)`.

    `required` names flags without a default that must be given; `aliases` maps old flag
    names to the current ones so that documented command lines keep working. A UserError
    becomes one line on stderr and exit status 2.
    """
    define_flags(config_class)
    for old, new in (aliases or {}).items():
        flags.DEFINE_alias(old, new)
    flags.mark_flags_as_required(list(required))

    def guarded(argv):
        if not FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the tool's output
            logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            _fail(f"unexpected arguments {argv[1:]}; pass options as --name=value")
        try:
            function(from_flags(config_class))
        except UserError as error:
            _fail(str(error))
        except Exception as error:  # a write outside tic_tf.atomic's (TensorBoard's events)
            reason = out_of_space(error)
            if reason is None:
                raise
            _fail(f"A write failed: {reason} ({str(error).strip().splitlines()[0]}). "
                  + RESUME_ADVICE)

    app.run(guarded, argv=argv)


def _leaf_fields(config_class):
    """The fields of `config_class`, those of nested configs in their place."""
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.type):
            yield from _leaf_fields(field.type)
        else:
            yield field


def parse(config_class, args):
    """`config_class` from command-line `args` (["--name=value", "--flagfile=...", ...]), as
    its command would parse them, without touching the process's flags: a run's exact
    configuration in Python. Bad values raise UserError."""
    flag_values = flags.FlagValues()
    define_flags(config_class, flag_values=flag_values)
    try:
        flag_values(["parse", *args])
    except flags.Error as error:
        raise UserError(str(error)) from None
    return from_flags(config_class, flag_values)


def define_flags(config_class, module_name=None, flag_values=FLAGS):
    """One absl flag per field of `config_class` (and of the configs nested in it), listed by
    `--help` as flags of `module_name` (default: the program being run)."""
    module_name = module_name or sys.argv[0]
    definers = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
                bool: flags.DEFINE_boolean, list: flags.DEFINE_list}
    for field in _leaf_fields(config_class):
        meta = field.metadata
        default = list(field.default) if meta["kind"] is list else field.default
        if meta["choices"] is not None and meta["kind"] is str:
            flags.DEFINE_enum(field.name, default, list(meta["choices"]), meta["help"],
                              module_name=module_name, flag_values=flag_values)
        else:
            definers[meta["kind"]](field.name, default, meta["help"], module_name=module_name,
                                   flag_values=flag_values)


def from_flags(config_class, flag_values=FLAGS):
    """`config_class` built from the parsed flags (after `define_flags(config_class)`)."""
    values = {}
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.type):
            values[field.name] = from_flags(field.type, flag_values)
            continue
        value = flag_values[field.name].value
        parse = field.metadata["parse"]
        if parse is not None:
            value = parse(value)
        elif field.metadata["kind"] is list:
            value = tuple(value)
        values[field.name] = value
    return config_class(**values)


def _fail(message):
    logging.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
