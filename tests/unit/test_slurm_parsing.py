"""c2p.cluster.slurm's parsers and checks on canned ``sinfo``/``squeue`` text: no SLURM needed."""

from __future__ import annotations

import pytest

from c2p.cluster import ClusterOptions, LaunchError
from c2p.cluster.options import mem_mb
from c2p.cluster.slurm import (
    check_fit,
    parse_node_addr,
    parse_sinfo,
    parse_squeue_state,
    sbatch_script,
    slurm_parameters,
)

# `sinfo -h -N -o '%R|%N|%c|%m|%G'` on a small GPU cluster: a node in two partitions, typed and
# untyped GPU GRES with socket bindings, a CPU-only node, a drained node's "+" suffix on CPUs.
SINFO = """\
gpu|gpu01|64|515000|gpu:a100:8(S:0-1)
gpu|gpu02|64|515000|gpu:8
gpu|gpu03|32+|257000|gpu:a100:4,gpu:t4:2
cpu|cpu01|128|1030000|(null)
debug|gpu01|64|515000|gpu:a100:8(S:0-1)
"""


def test_parse_sinfo_reads_partitions_nodes_and_gpus():
    parts = parse_sinfo(SINFO)
    assert sorted(parts) == ["cpu", "debug", "gpu"]
    gpu = {n["name"]: n for n in parts["gpu"]}
    assert gpu["gpu01"] == {"name": "gpu01", "cpus": 64, "mem_mb": 515000, "gpus": 8}
    assert gpu["gpu02"]["gpus"] == 8
    assert gpu["gpu03"] == {"name": "gpu03", "cpus": 32, "mem_mb": 257000, "gpus": 6}  # typed GRES summed
    assert parts["cpu"][0]["gpus"] == 0
    assert parse_sinfo("\n\n") == {}


@pytest.mark.parametrize(
    "opts",
    [
        ClusterOptions(cluster="slurm", nodes=2, tasks_per_node=8, gpus_per_node=8, partition="gpu"),
        ClusterOptions(cluster="slurm", nodes=1, tasks_per_node=1, cpus_per_task=128, mem="1000G", partition="cpu"),
        ClusterOptions(cluster="slurm", nodes=3, tasks_per_node=4, gpus_per_node=4),  # any partition: gpu01-03
    ],
)
def test_requests_that_fit(opts):
    check_fit(opts, parse_sinfo(SINFO))


@pytest.mark.parametrize(
    "opts, message",
    [
        (ClusterOptions(cluster="slurm", partition="h100"), "--partition 'h100': unknown partition; this cluster has: cpu, debug, gpu"),
        (ClusterOptions(cluster="slurm", nodes=3, tasks_per_node=8, gpus_per_node=8, partition="gpu"), "partition 'gpu' has 2 node"),
        (ClusterOptions(cluster="slurm", tasks_per_node=4, cpus_per_task=40, partition="gpu"), "largest node gpu01: 64 CPUs"),
        (ClusterOptions(cluster="slurm", mem="2T", partition="cpu"), "with 2T memory"),
    ],
)
def test_requests_that_cannot_fit_are_refused_with_the_reason(opts, message):
    with pytest.raises(LaunchError) as e:
        check_fit(opts, parse_sinfo(SINFO))
    assert message in str(e.value)


def test_no_partitions_is_refused():
    with pytest.raises(LaunchError, match="no partitions"):
        check_fit(ClusterOptions(cluster="slurm"), {})


@pytest.mark.parametrize(
    "stdout, stderr, rc, state",
    [
        ("RUNNING\n", "", 0, "RUNNING"),
        ("PENDING\nPENDING\n", "", 0, "PENDING"),  # an array: the first element's state
        ("", "slurm_load_jobs error: Invalid job id specified\n", 1, "GONE"),
        ("", "", 0, "GONE"),  # forgotten after MinJobAge
        ("", "slurm_load_jobs error: Socket timed out on send/recv operation\n", 1, "UNKNOWN"),
    ],
)
def test_parse_squeue_state(stdout, stderr, rc, state):
    assert parse_squeue_state(stdout, stderr, rc) == state


def test_squeue_without_a_cluster_config_is_an_error_not_a_state():
    with pytest.raises(LaunchError, match="squeue cannot reach SLURM"):
        parse_squeue_state("", "squeue: fatal: Unable to process configuration file\n", 1)


@pytest.mark.parametrize("text, mb", [("500M", 500), ("64G", 65536), ("64gb", 65536), ("1T", 1048576), ("2048", 2048), ("1024K", 1)])
def test_mem_mb(text, mb):
    assert mem_mb(text) == mb


def test_an_elastic_request_fits_when_its_fewest_nodes_do(tmp_path):
    parts = parse_sinfo(SINFO)
    check_fit(ClusterOptions(cluster="slurm", nodes=4, min_nodes=2, tasks_per_node=8, gpus_per_node=8, partition="gpu"), parts)
    with pytest.raises(LaunchError, match="impossible request: 3-4 node"):
        check_fit(ClusterOptions(cluster="slurm", nodes=4, min_nodes=3, tasks_per_node=8, gpus_per_node=8, partition="gpu"), parts)
    # submitted for its largest size, its ranks counted from the allocation it gets
    script = sbatch_script(ClusterOptions(cluster="slurm", nodes=2, min_nodes=1, tasks_per_node=4), tmp_path).splitlines()
    assert "#SBATCH --nodes=2" in script and "export SLURM_NTASKS=$((SLURM_JOB_NUM_NODES * 4)) SLURM_NPROCS=$((SLURM_JOB_NUM_NODES * 4))" in script
    assert not any("SLURM_NTASKS" in line for line in sbatch_script(ClusterOptions(cluster="slurm", nodes=2), tmp_path).splitlines())


def test_an_elastic_job_records_its_request_for_a_launcher_that_follows_it_later(tmp_path):
    from c2p.cluster.elastic import elastic_request, parse_job

    opts = ClusterOptions(cluster="slurm", nodes=4, min_nodes=2, tasks_per_node=8)
    assert "#SBATCH --comment=c2p-elastic:2-4:8" in sbatch_script(opts, tmp_path).splitlines()
    shown = parse_job(REQUEUED.replace("Power=", "Comment=c2p-elastic:2-4:8 Power="))
    assert elastic_request(shown) == ClusterOptions(cluster="slurm", nodes=4, min_nodes=2, tasks_per_node=8)
    assert elastic_request(parse_job(REQUEUED)) is None  # a fixed node count: nothing to shrink
    assert elastic_request({"Comment": "nightly c2p-elastic:2-4:8"}) is None  # someone else's comment
    fixed = sbatch_script(ClusterOptions(cluster="slurm", nodes=4), tmp_path)
    assert "--comment" not in fixed
    own = ClusterOptions(cluster="slurm", nodes=4, min_nodes=2, sbatch={"comment": "mine"})  # the user's own comment stays
    assert "#SBATCH --comment=mine" in sbatch_script(own, tmp_path).splitlines()


def test_follow_takes_no_config(capsys):
    from c2p.cli.pretrain import main

    assert main(["--follow", "12", "--config", "configs/pretrain/tiny.yaml"]) == 2
    assert "--follow 12 takes no config" in capsys.readouterr().err


def test_mem_mb_refuses_other_text():
    with pytest.raises(LaunchError, match="--mem '64 gigs'"):
        mem_mb("64 gigs")


def test_sbatch_parameters_and_script_carry_the_request(tmp_path):
    opts = ClusterOptions(cluster="slurm", nodes=2, tasks_per_node=4, gpus_per_node=4, partition="gpu", mem="64G",
                          sbatch={"mail-type": "END"}, time=90)
    params = slurm_parameters(opts)
    assert params["additional_parameters"] == {"requeue": True, "mem": "64G", "mail-type": "END"}
    assert params["srun_args"] == ["--kill-on-bad-exit=1"] and "setup" not in params  # no environment edits in the job
    script = sbatch_script(opts, tmp_path / "%j", array_size=3)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --time=90",
                 "#SBATCH --partition=gpu", "#SBATCH --mem=64G", "#SBATCH --array=0-2%3", "#SBATCH --requeue"):
        assert line in script.splitlines(), line
    assert "PYTHONPATH" not in script


@pytest.mark.parametrize(
    "text, addr",
    [
        # a node of .ci/cluster.sh: NodeAddr is the address of its namespace, its name resolves nowhere
        ("NodeName=c2p-h1 Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 NodeAddr=10.213.7.11 "
         "NodeHostName=c2p-h1 Version=22.05.8 RealMemory=10868 State=IDLE Partitions=hosts", "10.213.7.11"),
        # slurm.conf without NodeAddr: SLURM reports the name again
        ("NodeName=gpu07 Arch=x86_64 NodeAddr=gpu07 NodeHostName=gpu07 State=MIXED", "gpu07"),
        ("NodeName=gpu07 Arch=x86_64 NodeHostName=gpu07 State=MIXED", None),
        ("", None),
    ],
)
def test_parse_node_addr(text, addr):
    assert parse_node_addr(text) == addr


# `scontrol show job -o` of a job requeued after its second node died (slurm-wlm 22.05, cut)
REQUEUED = ("JobId=93 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 Account=(null) "
            "QOS=(null) JobState=PENDING Reason=ReqNodeNotAvail, UnavailableNodes:c2p-h2 Dependency=(null) Requeue=1 "
            "Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0 Partition=hosts AllocNode:Sid=localhost:18781 "
            "ReqNodeList=(null) NodeList=(null) NumNodes=2-2 NumCPUs=2 NumTasks=2 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
            "TRES=cpu=2,node=2,billing=2 Socks/Node=* NtasksPerN:B:S:C=1:0:*:* Power=")


def test_parse_job_reads_keys_with_slashes_and_colons_and_reasons_with_spaces():
    from c2p.cluster.elastic import parse_job

    job = parse_job(REQUEUED)
    assert job["JobState"] == "PENDING" and job["Restarts"] == "1" and job["Partition"] == "hosts"
    assert job["Reason"] == "ReqNodeNotAvail, UnavailableNodes:c2p-h2"
    assert job["NumNodes"] == "2-2" and job["CPUs/Task"] == "1" and job["AllocNode:Sid"] == "localhost:18781"
    assert job["TRES"] == "cpu=2,node=2,billing=2" and job["Power"] == ""


def test_count_usable_skips_nodes_that_do_not_respond_or_take_no_jobs():
    from c2p.cluster.elastic import count_usable

    text = "c2p-h1 mixed\nc2p-h2 down*\nc2p-h3 idle*\nc2p-h4 drained\nc2p-h5 allocated\nc2p-h5 allocated\nc2p-h6 idle\n"
    assert count_usable(text) == 3
