"""The command line of train.py and finetune.py: flags (--config FILE, --config.FIELD=...,
--workdir DIR), one `error:` line and exit 2 for a user's mistake, and the exit codes of a
stop by a signal.

Only the standard library is imported at the top: an entry point calls `exit_on_signals`
before jax, absl or the library load (seconds on a loaded machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any, Iterator

USAGE_EXIT = 2


def exit_on_signals() -> None:
    """SIGTERM / Ctrl-C end the process at once, saying so, until the run's preemption watch
    takes over (flax_bert/preemption.py): nothing is written before."""
    def stop(signum: int, frame: object) -> None:
        os.write(2, f"interrupted ({signal.Signals(signum).name}) with nothing unsaved; rerun "
                    f"the same command to resume\n".encode())
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def fail(message: str) -> None:
    """Prints `error: message` as one line and exits non-zero."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def _unknown_field(argv: list[str], error: Exception, config_file: str) -> str:
    """Names the --config.* override whose field does not exist."""
    name = str(error).strip("'\" ")
    where = f"check the name in configs/{os.path.basename(config_file)}"
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key.startswith("--config.") and key.rsplit(".", 1)[-1] == name:
            return f"{key}: the config has no field {name!r}; {where}"
    return f"unknown config field {name!r}; {where}"


def parse_flags(argv: list[str], default_config: str, default_workdir: str,
                flag_values: Any = None) -> list[str]:
    """Defines and parses the flags (in `flag_values`: absl's global FLAGS when None, or a
    fresh FlagValues for a run in-process); any mistake becomes one `error:` line."""
    from absl import flags
    from ml_collections import config_flags

    from flax_bert import run_config

    flag_values = flags.FLAGS if flag_values is None else flag_values
    run_config.make_siblings_importable(run_config.config_file(argv) or default_config)
    try:
        flags.DEFINE_string("workdir", default_workdir,
                            "Directory for data cache, checkpoints, metrics.",
                            flag_values=flag_values)
        # ml_collections applies --config.* overrides while defining the flag.
        config_flags.DEFINE_config_file("config", default_config, "Run config file.",
                                        flag_values=flag_values, lock_config=True,
                                        sys_argv=argv)
        return flag_values(argv)
    except flags.Error as e:
        fail(f"{e}; see python {os.path.basename(argv[0])} --helpfull")
    except (AttributeError, KeyError) as e:
        fail(_unknown_field(argv, e, default_config))
    except (TypeError, ValueError, OSError, SyntaxError, ImportError) as e:
        fail(f"bad --config / --config.* value: {e}")
    return []


def start(argv: list[str], flag_values: Any = None) -> tuple[Any, str]:
    """The parsed run's (config, workdir), after what every run sets up first: no stray
    arguments, quiet logs, jax's compilation cache (before the first compile)."""
    from absl import flags, logging

    from flax_bert import tpu_chips
    from flax_bert.trainer import compile_cache, run_folder

    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}; flags look like "
             f"--config.train.steps=10")
    flag_values = flags.FLAGS if flag_values is None else flag_values
    tpu_chips.quiet_libtpu()  # libtpu installed (the test extra has it), no TPU attached
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO
    logging.get_absl_handler().addFilter(run_folder.HideDiskFullTracebacks())
    config, workdir = flag_values.config, flag_values.workdir
    compile_cache.enable(config.train.compilation_cache_dir, workdir)
    return config, workdir


@contextlib.contextmanager
def reporting(workdir: str) -> Iterator[None]:
    """Ends the process as a user expects: a user's mistake (UserError) or a full disk as
    one `error:` line (exit 2), an interruption as its message and exit code."""
    from flax_bert import preemption
    from flax_bert.errors import Interrupted, UserError
    from flax_bert.trainer import run_folder

    try:
        yield
    except UserError as e:
        fail(str(e))
    except OSError as e:
        if not run_folder.is_disk_full(e):
            raise
        fail(f"{e} ({run_folder.free_space(e.filename or workdir)}); free space, then "
             f"rerun the same command to resume")
    except Interrupted as e:
        if e.exit_code:  # a signal: all is saved and closed; nothing else is waited for
            preemption.exit_now(str(e), e.exit_code)
        print(str(e), file=sys.stderr)
        sys.exit(0)


def overridden_model_fields(flag_values: Any = None) -> set[str]:
    """The config.model fields set on the command line (--config.model.FIELD=...)."""
    from absl import flags
    from ml_collections import config_flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    overrides = config_flags.get_override_values(flag_values["config"])
    return {key.split(".", 1)[1] for key in overrides if key.startswith("model.")}
