"""The commands' shared behaviour without running a job: one skeleton for flags, overrides and
exit codes, and the render command's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from c2p.cli import render
from c2p.cli.base import UsageError, command_parser, run_command
from c2p.cluster import JobFailedError, LaunchError
from c2p.config import ConfigError
from c2p.config.render import RenderJobConfig


def _status(exc: BaseException | None, capsys) -> tuple[int, str]:
    def body(args):
        if exc is not None:
            raise exc
        return None

    rc = run_command(command_parser("test command", RenderJobConfig), body, ["a=1", "--config", "x.yaml", "b=2"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "exc, status",
    [
        (None, 0),
        (JobFailedError("job 7 failed; logs: /l"), 1),
        (LaunchError("--partition 'x': unknown"), 2),
        (ConfigError("train.steps", -1, ">= 1"), 2),
        (UsageError("--lr 0: expected > 0"), 2),
    ],
)
def test_exit_status_follows_what_went_wrong(exc, status, capsys):
    rc, err = _status(exc, capsys)
    assert rc == status
    assert (err == "") if exc is None else err.startswith(f"error: {exc}")


def test_an_unexpected_error_is_not_swallowed(capsys):
    with pytest.raises(ZeroDivisionError):
        _status(ZeroDivisionError("bug"), capsys)


def test_overrides_come_before_or_after_flags():
    p = command_parser("x", RenderJobConfig)
    args = p.parse_intermixed_args(["job.shard_size=4", "--config", "c.yaml", "views.set=6"])
    assert args.config == "c.yaml" and args.overrides == ["job.shard_size=4", "views.set=6"]
    assert "job.shard_size" in p.format_help()  # every config key is listed


def test_render_bare_leaf_overrides_and_default_output():
    args = render.build_parser().parse_intermixed_args(["--corpus", "synthetic", "--root", "/data/w", "--split", "test", "shard_size=4"])
    cfg = render.build_config(args)
    assert cfg.job.shard_size == 4 and cfg.out == str(Path("shards") / "synthetic-test")
    args = render.build_parser().parse_intermixed_args(["--corpus", "synthetic", "--root", "/data/w", "--out", "/o"])
    assert render.build_config(args).out == "/o"
    with pytest.raises(ConfigError, match="job.shard_size"):  # other errors are not hidden by the default
        render.build_config(render.build_parser().parse_intermixed_args(["--corpus", "synthetic", "--root", "/w", "shard_size=0"]))
