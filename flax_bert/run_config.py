"""A run's config from command-line arguments, as train.py reads them: `--config FILE` (a
configs/*.py file) and `--config.FIELD=VALUE` overrides (ml_collections' config_flags).
For the library's own command lines (prepare, the ahead-of-time compile)."""

from __future__ import annotations

import os
import sys
from typing import Any

from flax_bert.errors import UserError


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(--config FILE and --config.* arguments, the others)."""
    config_args, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            config_args += argv[i:i + 2]
            i += 2
            continue
        (config_args if arg.split("=", 1)[0] == "--config" or arg.startswith("--config.")
         else rest).append(arg)
        i += 1
    return config_args, rest


def config_file(argv: list[str]) -> str | None:
    """The FILE of --config FILE (or --config=FILE) in `argv`, if any."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def make_siblings_importable(path: str | None) -> None:
    """A config file in a `configs` package (configs/tiny.py does `from configs import
    default`) loads from any working directory: the package's parent goes on sys.path."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    root = os.path.dirname(folder)
    if os.path.basename(folder) == "configs" and root not in sys.path:
        sys.path.append(root)


def names_a_file(config_args: list[str]) -> bool:
    """Whether `config_args` has --config FILE."""
    return any(arg.split("=", 1)[0] == "--config" for arg in config_args)


def load(config_args: list[str], prog: str) -> Any:
    """The ConfigDict of `config_args` (split_args'); a mistake, or overrides without
    --config FILE, is a UserError."""
    from absl import flags
    from ml_collections import config_flags

    if not names_a_file(config_args):
        raise UserError(f"{prog}: {' '.join(config_args) or 'no --config'}: pass the run's "
                        f"config file, --config configs/X.py, before its --config.* overrides")
    make_siblings_importable(config_file(config_args))
    values, argv = flags.FlagValues(), [prog, *config_args]
    try:
        config_flags.DEFINE_config_file("config", None, "Run config file.",
                                        flag_values=values, lock_config=True, sys_argv=argv)
        values(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError,
            SyntaxError, ImportError) as e:
        raise UserError(f"bad --config / --config.* value: {' '.join(str(e).split())}") from None
    return values.config
