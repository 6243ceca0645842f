"""c2p.cluster options and the pre-training command without running a job: SLURM time parsing,
local request checks, the dry run's sbatch script and resolved config, refusals before
anything is written. Local processes and ranks: tests/integration/test_launch_local.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from testdata import tiny_overrides

from c2p.cli import pretrain as pretrain_cli
from c2p.cluster import (
    ClusterOptions,
    LaunchError,
    parse_time,
)
from c2p.cluster.options import parse_nodes

REPO = Path(__file__).resolve().parents[2]

TINY = REPO / "configs" / "pretrain" / "tiny.yaml"

# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("text, minutes", [(90, 90), ("90", 90), ("02:00:00", 120), ("1:30", 2), ("1-00:00:00", 1440), ("0-2", 120), ("00:10:01", 11)])
def test_parse_time(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["soon", "0", "1:2:3:4"])
def test_parse_time_refuses(text):
    with pytest.raises(LaunchError, match="--time"):
        parse_time(text)


@pytest.mark.parametrize("text, span", [("2", (2, 2)), (1, (1, 1)), ("1-2", (1, 2)), (" 2 - 4 ", (2, 4))])
def test_parse_nodes(text, span):
    assert parse_nodes(text) == span


@pytest.mark.parametrize("text", ["two", "0", "2-1", "0-2", "1-", "1-2-3"])
def test_parse_nodes_refuses(text):
    with pytest.raises(LaunchError, match=f"--nodes {text!r}"):
        parse_nodes(text)


def test_local_requests_are_checked():
    with pytest.raises(LaunchError, match="--nodes 2 with --cluster local"):
        ClusterOptions(cluster="local", nodes=2).validate()
    with pytest.raises(LaunchError, match="one process per GPU"):
        ClusterOptions(cluster="slurm", tasks_per_node=4, gpus_per_node=2).validate()


# ----------------------------------------------------------------------------- dry run and refusals


def test_dry_run_prints_the_sbatch_script_and_resolved_config(tmp_path, tiny_shards, capsys):
    rc = pretrain_cli.main([
        "--config", str(TINY), "--cluster", "slurm", "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "10",
        "--partition", "gpu", "--account", "vision", "--qos", "high", "--time", "2:00:00", "--constraint", "h100",
        "--mem", "500G", "--exclusive", "--sbatch", "mail-type=END", "--dry-run",
        *tiny_overrides(tiny_shards, tmp_path / "runs", "dry", "train.steps=7"),
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    for flag in ["--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=10", "--partition=gpu", "--account=vision",
                 "--qos=high", "--time=120", "--constraint=h100", "--mem=500G", "--exclusive", "--mail-type=END", "--requeue", "--signal=USR2@120"]:
        assert re.search(rf"^#SBATCH {re.escape(flag)}$", out, flags=re.M), f"{flag} missing from:\n{out}"
    run_dir = tmp_path / "runs" / "dry"
    assert f"--output={run_dir}/logs/%j/%j_0_log.out" in out
    assert "srun --unbuffered" in out and "submitit.core._submit" in out
    assert "steps: 7" in out and f"- {tiny_shards}" in out  # the resolved config, paths absolute
    assert not (tmp_path / "runs").exists(), "a dry run wrote something"


def test_an_elastic_node_count_reaches_sbatch_and_the_batch_must_split_at_every_size(tmp_path, tiny_shards, capsys):
    argv = ["--config", str(TINY), "--cluster", "slurm", "--tasks-per-node", "2", "--dry-run"]
    assert pretrain_cli.main([*argv, "--nodes", "1-2", *tiny_overrides(tiny_shards, tmp_path / "runs", "el", "train.batch_size=8")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^#SBATCH --nodes=2$", out, flags=re.M) and "SLURM_NTASKS=$((SLURM_JOB_NUM_NODES * 2))" in out, out
    # 8 splits over 1 x 2 and 2 x 2 ranks; --nodes 2-3 may get 3 x 2 = 6 ranks, which it does not split over
    rc = pretrain_cli.main([*argv, "--nodes", "2-3", *tiny_overrides(tiny_shards, tmp_path / "runs", "el", "train.batch_size=8")])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(r"train.batch_size.*= 6 \(--nodes 2-3 may run on 3\)", err), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "extra, argv, expected",
    [
        (["train.stepz=3"], [], "config key 'train.stepz'.*did you mean 'train.steps'"),
        (["train.steps=-1"], [], "config key 'train.steps'.*>= 1"),
        (["data.shards=[/nonexistent/shards]"], [], r"data.shards\[0\].*does not exist"),
        (["train.batch_size=16"], ["--tasks-per-node", "3"], "train.batch_size.*multiple of .* = 3"),
        ([], ["--time", "later"], "--time 'later'"),
        ([], ["--nodes", "2"], "--nodes 2 with --cluster local"),
    ],
)
def test_bad_config_or_request_is_refused_before_anything_is_written(tmp_path, tiny_shards, capsys, extra, argv, expected):
    rc = pretrain_cli.main(["--config", str(TINY), "--cluster", "local", *argv, *tiny_overrides(tiny_shards, tmp_path / "runs", "bad", *extra)])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(expected, err), err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- --cluster local




def test_render_slurm_logs_sit_beside_a_local_output_and_under_shards_for_a_bucket(tmp_path, monkeypatch):
    from c2p.cli.render import slurm_log_dir

    monkeypatch.chdir(tmp_path)
    assert slurm_log_dir("out/syn") == tmp_path / "out" / "syn.slurm"
    assert slurm_log_dir("s3://data/render/syn/") == tmp_path / "shards" / "data-render-syn.slurm"
