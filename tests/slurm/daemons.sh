# tests/slurm/daemons.sh -- sourced by setup.sh and teardown.sh: the daemons they started,
# found by pid file only (never by name). The sourcing script defines log().

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
