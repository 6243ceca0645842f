"""The cluster layer: where a job runs and how its processes find each other.

One module per concept:

| module | holds |
|---|---|
| :mod:`~c2p.cluster.options` | :class:`ClusterOptions` (sbatch's options, validated) and the shared ``--cluster/--nodes/...`` flags |
| :mod:`~c2p.cluster.task` | :class:`ClusterTask`, the callable every rank of a job runs; ``"module:function"`` targets |
| :mod:`~c2p.cluster.slurm` | submitit executors, the sbatch script, ``sinfo``/``squeue`` parsing, checks before submission |
| :mod:`~c2p.cluster.submit` | submit one job or a job array, describe it, wait, collect results, follow a job submitted earlier |
| :mod:`~c2p.cluster.elastic` | ``--nodes MIN-MAX``: a job requeued after a lost node restarts on the nodes left |
| :mod:`~c2p.cluster.raycluster` | a Ray cluster inside one SLURM job (head on node 0, workers elsewhere) |
| :mod:`~c2p.cluster.env` | the SLURM/submitit/torchrun environment → torch.distributed variables |
| :mod:`~c2p.cluster.netif` | which local interface reaches an address (gloo's GLOO_SOCKET_IFNAME across hosts) |

``--cluster local`` runs the same submitted callable through submitit's LocalExecutor:
``--tasks-per-node`` processes on this machine, each with SUBMITIT_LOCAL_* variables that
:func:`~c2p.cluster.env.setup_env_from_cluster` maps to RANK/WORLD_SIZE/... exactly as it
maps SLURM_PROCID/SLURM_NTASKS/... on a cluster. Jobs unpickle their task from ``c2p.*``, so
a node needs c2p installed in the submitting interpreter's environment and nothing else.

submitit is imported lazily inside functions: importing this package costs nothing.
"""

from c2p.cluster.errors import JobFailedError, LaunchError
from c2p.cluster.options import ClusterOptions, add_cluster_args, default_cluster, parse_time
from c2p.cluster.raycluster import RayClusterTask, run_ray_in_slurm, stop_ray_processes
from c2p.cluster.slurm import check_request, make_executor, sbatch_script, slurm_state
from c2p.cluster.submit import collect, describe_job, follow, launch, launch_array, submit, submit_array, wait
from c2p.cluster.task import ClusterTask

__all__ = [
    "LaunchError", "JobFailedError", "ClusterOptions", "ClusterTask", "RayClusterTask", "add_cluster_args",
    "default_cluster", "parse_time", "make_executor", "sbatch_script", "check_request", "submit", "submit_array",
    "collect", "wait", "describe_job", "slurm_state", "stop_ray_processes", "run_ray_in_slurm", "launch", "launch_array",
    "follow",
]
