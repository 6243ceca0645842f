# Sourced by .ci/slurm.sh and .ci/cluster.sh: the slurm.conf lines both test clusters share.
# Debian's slurm-wlm + munge without systemd or cgroups: proctrack/linuxproc, task/none, no
# accounting database; short timeouts, because these clusters serve tests.

slurm_common_conf() {  # slurm_common_conf MUNGE_SOCKET: prints the shared slurm.conf lines
  cat <<EOF
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (default 120 s): short for tests.
AuthInfo=socket=$1,cred_expire=10
SlurmUser=root
SlurmdUser=root
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Jobs stay visible to squeue/scontrol for 5 min after they end (no accounting database here).
MinJobAge=300
# Requeue is what submitit does on preemption/timeout.
JobRequeue=1
# Refuse at submission what the partition can never run (e.g. more tasks than CPUs).
EnforcePartLimits=ALL
KillWait=5
SchedulerParameters=batch_sched_delay=1,sched_min_interval=100000
MailProg=/bin/true
EOF
}
