# tests/slurm/daemons.sh -- sourced by the set-up and teardown scripts of the one-node and
# the multi-node Slurm: the daemons they started, found by pid file only (never by name),
# and munged, which both share. The sourcing script defines log().

RUN=/run/mpihub-slurm              # <daemon>.pid, only for the daemons setup.sh started

pid_of() { [ -f "$RUN/$1.pid" ] && tr -dc '0-9' < "$RUN/$1.pid" || true; }

# ours NAME: the pid in our pid file is alive, not a zombie, and still NAME (not a reused pid)
ours() {
  local pid stat
  pid=$(pid_of "$1")
  [ -n "$pid" ] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

# stop_ours NAME: SIGTERM, then SIGKILL after 20 s, and forget its pid file
stop_ours() {
  local pid i
  pid=$(pid_of "$1")
  [ -n "$pid" ] || return 0
  if ours "$1"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do ours "$1" || break; sleep 0.2; done
    if ours "$1"; then
      log "$1 ($pid) still alive after 20 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 50); do ours "$1" || break; sleep 0.1; done
    fi
    log "$1 ($pid) stopped"
  fi
  rm -f "$RUN/$1.pid"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# start_munged: munged answering (started as user munge, with a key, when it is not); its pid
# file goes to $RUN. Returns 1 when it does not answer within 20 s.
start_munged() {
  local i
  if munge_ok; then log "munged answering"; return 0; fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged 9>&-
  for i in $(seq 200); do munge_ok && [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  munge_ok || return 1
  mkdir -p "$RUN"
  cp /run/munge/munged.pid "$RUN/munged.pid"   # munged (user munge) cannot write into $RUN
  log "munged started (pid $(pid_of munged))"
}
