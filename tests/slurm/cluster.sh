#!/usr/bin/env bash
# A real one-node Slurm on this machine, for the tests marked `slurm`:
#
#   bash tests/slurm/cluster.sh start     # installs what is missing (apt), starts it all
#   bash tests/slurm/cluster.sh stop
#   bash tests/slurm/cluster.sh status    # exit 0 when the node takes jobs
#
# munge, MariaDB, slurmdbd (accounting: without it submitit cannot see a job that failed
# and waits for ever), slurmctld and slurmd, all as root. One node with this machine's
# CPUs and memory, one partition `debug`; tasks are bound to the CPUs they were given
# (task/affinity), as on real clusters. Needs root and apt; prints why not and exits 1
# otherwise (the tests then skip, saying so). Everything lives under $SLURM_CI_DIR.
set -euo pipefail
DIR="${SLURM_CI_DIR:-/tmp/alexnet-eval-slurm}"
CONF=/etc/slurm
HOST="$(hostname -s)"

log() { echo "cluster.sh: $*" >&2; }

need_root() {
    if [[ $(id -u) != 0 ]]; then log "needs root (to run munged, slurmctld and slurmd)"; exit 1; fi
}

install() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v munged >/dev/null || missing+=(munge)
    command -v mysqld_safe >/dev/null || command -v mariadbd-safe >/dev/null || missing+=(mariadb-server)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || { log "apt-get not found; cannot install ${missing[*]}"; exit 1; }
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$DIR/apt.log" 2>&1 \
            || { apt-get update -q >>"$DIR/apt.log" 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$DIR/apt.log" 2>&1; } \
            || { log "apt-get install failed: see $DIR/apt.log"; exit 1; }
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$((seconds * 4))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    log "timed out waiting for $what"; exit 1
}

start_munge() {
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    wait_for 20 munge munge -n
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    if ! pgrep -x mariadbd >/dev/null && ! pgrep -x mysqld >/dev/null; then
        (command -v mariadbd-safe >/dev/null && mariadbd-safe || mysqld_safe) >"$DIR/mariadb.log" 2>&1 &
    fi
    wait_for 60 MariaDB mysqladmin ping
    mysql -u root <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-ci';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p "$CONF" "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-ci
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
EOF
    chmod 600 "$CONF/slurmdbd.conf"
    cat >"$CONF/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ReturnToService=2
MinJobAge=600
KillWait=30
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    need_root
    mkdir -p "$DIR"
    install
    write_conf
    start_munge
    start_mariadb
    pgrep -x slurmdbd >/dev/null || slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster ci >/dev/null 2>&1 || true
    pgrep -x slurmctld >/dev/null || slurmctld -c
    wait_for 60 slurmctld scontrol ping
    pgrep -x slurmd >/dev/null || slurmd
    wait_for 60 "the node to take jobs" node_ready
    log "up: $(sinfo -h -o '%P %a %D %t %c cpus %m MB')"
}

node_ready() { sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'; }

gone() { ! pgrep -x "$1" >/dev/null; }

stop() {  # and wait for each daemon to exit: a start right after must not find it dying
    for daemon in slurmd slurmctld slurmdbd; do pkill -x "$daemon" 2>/dev/null || true; done
    mysqladmin shutdown 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
    for daemon in slurmd slurmctld slurmdbd mariadbd munged; do wait_for 30 "$daemon to exit" gone "$daemon"; done
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) command -v sinfo >/dev/null && node_ready ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
