#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian/Ubuntu, run as root): munge + slurmctld + slurmd.
#
#   scripts/slurm_local.sh start     # install slurm-wlm + munge if missing, write the config, start the daemons
#   scripts/slurm_local.sh status    # sinfo / squeue
#   scripts/slurm_local.sh stop      # stop the daemons this script started (pid files)
#
# `start` is idempotent: daemons already running are left alone; the config is rewritten only if it is ours.
# The node gets this machine's CPUs (nproc) and memory (free -m, minus 1 GiB for the system). GPUs
# found by nvidia-smi become GRES gpu:N, so a job asking for one GPU gets its own CUDA_VISIBLE_DEVICES:
# on a multi-GPU workstation this is "one sweep job per GPU". SLURM_LOCAL_FAKE_GPUS=N (tests, CPU machines)
# declares N stand-in GPU devices (files under the state folder) so that GPU requests schedule and get
# CUDA_VISIBLE_DEVICES without hardware.
#
# scancel sends SIGTERM, which submitit's job wrapper ignores; the job is killed KillWait seconds later
# (here 2 s; Slurm's default, usual on clusters, is 30 s). Nothing is lost either way: every batch of
# answers is flushed before the next one starts, and a rerun resumes.
#
# Files: /etc/slurm/slurm.conf (+ gres.conf), state, logs and pid files in $SLURM_LOCAL_DIR
# (default /var/lib/slurm-local). An /etc/slurm/slurm.conf not written by this script is never touched.
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/var/lib/slurm-local}
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK="# written by svdprune scripts/slurm_local.sh"
PARTITION=${SLURM_LOCAL_PARTITION:-local}

die() { echo "slurm_local: $*" >&2; exit 1; }
log() { echo "slurm_local: $*"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get; install them yourself"
    log "installing slurm-wlm and munge (apt-get)"
    local t0=$SECONDS
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    log "installed in $((SECONDS - t0)) s"
}

gpu_count() {
    if [[ -n "${SLURM_LOCAL_FAKE_GPUS:-}" ]]; then echo "$SLURM_LOCAL_FAKE_GPUS"; return; fi
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; else echo 0; fi
}

write_config() {
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    local host cpus mem gpus gres_node="" gres_types="" old=""
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(free -m | awk '/^Mem:/ {print $2}') - 1024 ))
    gpus=$(gpu_count)
    mkdir -p "$STATE"/{ctld,spool,log}
    chown -R slurm:slurm "$STATE"
    [[ -f $CONF ]] && old=$(cat "$CONF" "$GRES_CONF" 2>/dev/null || true)
    if (( gpus > 0 )); then
        gres_types="GresTypes=gpu"
        gres_node=" Gres=gpu:$gpus"
        if [[ -n "${SLURM_LOCAL_FAKE_GPUS:-}" ]]; then
            mkdir -p "$STATE/fakegpu"
            for ((i = 0; i < gpus; i++)); do [[ -c $STATE/fakegpu/gpu$i ]] || mknod "$STATE/fakegpu/gpu$i" c 1 3; done  # like /dev/null
            echo "$MARK
Name=gpu File=$STATE/fakegpu/gpu[0-$((gpus - 1))]" >"$GRES_CONF"
        else
            echo "$MARK
Name=gpu File=/dev/nvidia[0-$((gpus - 1))]" >"$GRES_CONF"
        fi
    else
        rm -f "$GRES_CONF"
    fi
    cat >"$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$gres_types
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem$gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    CHANGED=0
    [[ $old == "$(cat "$CONF" "$GRES_CONF" 2>/dev/null || true)" ]] || CHANGED=1
    log "node $host: CPUs=$cpus RealMemory=${mem}M GPUs=$gpus, partition $PARTITION ($CONF)"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    [[ $(id -u) == 0 ]] || die "start needs root (it installs packages and starts system daemons)"
    local t0=$SECONDS
    install_packages
    write_config
    if ! alive /run/munge/munged.pid; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- munged
    fi
    if [[ $CHANGED == 1 ]]; then  # node resources (GRES) change only with a restart of both daemons
        stop_pid slurmd "$STATE/slurmd.pid"
        stop_pid slurmctld "$STATE/slurmctld.pid"
    fi
    alive "$STATE/slurmctld.pid" || slurmctld
    alive "$STATE/slurmd.pid" || slurmd
    for _ in $(seq 1 60); do
        if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            log "up in $((SECONDS - t0)) s"
            sinfo
            return
        fi
        sleep 0.5
    done
    die "the node did not become idle in 30 s; see $STATE/log/ and 'sinfo -R'"
}

stop_pid() {  # stop_pid NAME PIDFILE
    if alive "$2"; then
        local pid
        pid=$(cat "$2")
        kill "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        log "stopped $1 ($pid)"
    fi
}

stop() {
    stop_pid slurmd "$STATE/slurmd.pid"
    stop_pid slurmctld "$STATE/slurmctld.pid"
    stop_pid munged /run/munge/munged.pid
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
