"""The skeleton every command shares: logging, ``--config FILE`` + ``key=value`` overrides,
and one mapping from what went wrong to the exit status.

| exit | meaning |
|---|---|
| 0 | done (or submitted, when not waiting) |
| 1 | the job ran and failed (:class:`~c2p.cluster.JobFailedError`, a shard or run failed): re-run or read the logs |
| 2 | refused: bad arguments, config, inputs or resource request; nothing was written or submitted |

A command is a parser and a body::

    def build_parser() -> argparse.ArgumentParser:
        p = command_parser(__doc__, PretrainConfig)       # --config, key=value overrides, config keys in --help
        add_cluster_args(p, job_name="c2p-pretrain")
        return p

    def body(args) -> int | None:                         # raises ConfigError/LaunchError/... to refuse
        ...

    def main(argv=None) -> int:
        return run_command(build_parser(), body, argv)
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Sequence

from c2p.cluster.errors import JobFailedError, LaunchError
from c2p.config.core import ConfigError, describe

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_REFUSED", "UsageError", "command_parser", "run_command", "print_result"]

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


class UsageError(ValueError):
    """A command's arguments or inputs are unusable (exit 2); the message names the argument."""


def command_parser(doc: str | None, config_cls: type | None = None) -> argparse.ArgumentParser:
    """A parser whose description is the first line of ``doc`` (the command module's docstring)
    and, with ``config_cls``, ``--config FILE`` plus positional ``key=value`` overrides, every
    key listed in the epilog."""
    lines = (doc or "").strip().splitlines()
    p = argparse.ArgumentParser(
        description=lines[0] if lines else None,
        epilog=("config keys: " + ", ".join(k for k, *_ in describe(config_cls))) if config_cls else None,
    )
    if config_cls is not None:
        p.add_argument("--config", help="YAML config; keys not in it keep their defaults")
        p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=20")
    return p


def run_command(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
    *,
    refused: tuple[type[BaseException], ...] = (),
    log_level: int = logging.INFO,
) -> int:
    """Parse ``argv`` (flags and overrides in any order), run ``body`` and turn its outcome into
    an exit status: its return value (``None`` = 0); 1 for :class:`JobFailedError`; 2 for
    :class:`ConfigError`, :class:`LaunchError`, :class:`UsageError` and the command's own
    ``refused`` errors (e.g. a corpus that cannot be read), each printed as ``error: ...``."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser.parse_intermixed_args(argv)
    try:
        status = body(args)
    except JobFailedError as e:  # submitted, then failed: the message names the logs
        return _error(e, EXIT_FAILED)
    except (ConfigError, LaunchError, UsageError, *refused) as e:  # refused before anything was left behind
        return _error(e, EXIT_REFUSED)
    return EXIT_OK if status is None else int(status)


def _error(e: BaseException, status: int) -> int:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return status


def print_result(result: Any) -> None:
    """Print a job's result on stdout, where scripts read it: a dict as one JSON line, a string
    (a path) as it is; anything else (a submitted job not waited for, a dry run) prints nothing."""
    import json

    if isinstance(result, dict):
        print(json.dumps(result, default=str), flush=True)
    elif isinstance(result, str):
        print(result, flush=True)
