"""Pretrains BERT (MLM + NSP).

    python train.py                                   # the default run, in ./runs/default
    python train.py --config configs/base.py --workdir runs/base --config.train.steps=1000

Rerunning a command with the same --workdir resumes from its newest checkpoint; rerunning a
finished run says so and changes nothing. SIGTERM or Ctrl-C ends the run within seconds
with 128 + the signal number and a line saying how to resume (once it has trained, after
saving a checkpoint of the current step).
A workdir that holds a model (trained, or imported with `python -m flax_bert.hf import`)
continues it: only the --config.model.* flags given here are compared with it.
Mistakes on the command line or in the config end with one `error: ...` line and exit 2.
"""

import functools
import os
import signal
import sys
from typing import Callable


def exit_on_signals() -> None:
    """SIGTERM / Ctrl-C end the process at once, saying so, until the run's preemption watch
    takes over (flax_bert/preemption.py): nothing is written before. Set before the imports
    (absl's alone take 0.3-0.5 s on a loaded machine)."""
    def stop(signum: int, frame: object) -> None:
        os.write(2, f"interrupted ({signal.Signals(signum).name}) with nothing unsaved; rerun "
                    f"the same command to resume\n".encode())
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


if __name__ == "__main__":
    exit_on_signals()

from absl import app, flags, logging  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
DEFAULT_WORKDIR = "runs/default"
USAGE_EXIT = 2

FLAGS = flags.FLAGS


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


def parse_flags(argv: list[str], default_config: str = DEFAULT_CONFIG,
                default_workdir: str = DEFAULT_WORKDIR,
                flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """Defines and parses the flags (in `flag_values`: absl's global FLAGS, or a fresh
    FlagValues for a run in-process); any mistake becomes one `error:` line."""
    from ml_collections import config_flags

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


def run(argv: list[str], train_and_evaluate: Callable,
        flag_values: flags.FlagValues = FLAGS) -> None:
    """`train_and_evaluate(config, workdir)` from the parsed flags; user mistakes end in
    one `error:` line (exit 2), an interruption in its message and exit code."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}; flags look like --config.train.steps=10")
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO
    from flax_bert import preemption
    from flax_bert.trainer import run_folder as workdir
    from flax_bert.errors import Interrupted, UserError
    from flax_bert.trainer import compile_cache

    logging.get_absl_handler().addFilter(workdir.HideDiskFullTracebacks())
    config, workdir_path = flag_values.config, flag_values.workdir
    compile_cache.enable(config.train.compilation_cache_dir, workdir_path)

    try:
        train_and_evaluate(config, workdir_path)
    except UserError as e:
        fail(str(e))
    except OSError as e:
        if not workdir.is_disk_full(e):
            raise
        fail(f"{e} ({workdir.free_space(e.filename or workdir_path)}); free space, then "
             f"rerun the same command to resume")
    except Interrupted as e:
        if e.exit_code:  # a signal: all is saved and closed; nothing else is waited for
            preemption.exit_now(str(e), e.exit_code)
        print(str(e), file=sys.stderr)
        sys.exit(0)


def model_flags(flag_values: flags.FlagValues = FLAGS) -> set[str]:
    """The config.model fields set on the command line (--config.model.FIELD=...)."""
    from ml_collections import config_flags

    overrides = config_flags.get_override_values(flag_values["config"])
    return {key.split(".", 1)[1] for key in overrides if key.startswith("model.")}


def main(argv: list[str], flag_values: flags.FlagValues = FLAGS) -> None:
    from flax_bert.tasks import pretraining

    run(argv, functools.partial(pretraining.train_and_evaluate,
                                explicit_model_fields=model_flags(flag_values)), flag_values)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
