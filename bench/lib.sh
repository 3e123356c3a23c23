# Shared helpers for the bench/ scripts. Source it: `. "$(dirname "$0")/lib.sh"`.
#
# Every process a script starts goes through bg_start, which runs it in its own
# process group and records the group; the EXIT trap set by bench_init stops
# exactly those groups (SIGTERM, then SIGKILL after a grace period).
#
# Environment knobs common to all scripts:
#   SWARM_BIN   folder holding swarmd and swarmctl (default: <repo>/.build-static/release, brought up
#               to date first with `swift build -c release --static-swift-stdlib -Xlinker -no-pie --scratch-path .build-static`)
#   BENCH_TMP   scratch folder (default: a fresh mktemp -d, removed on exit unless KEEP_TMP=1)

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
NODE_APP="$REPO_DIR/etc/apps/node/server.js"
CLK_TCK="$(getconf CLK_TCK)"
BENCH_PGIDS=()

say() { printf '%s\n' "$*" >&2; }
note() { printf '# %s\n' "$*"; }

# Prints a command line (shell-quoted) then runs it.
run() {
    printf '+ %s\n' "$(printf '%q ' "$@")" >&2
    "$@"
}

# Prints a command line; for commands run in a way run() cannot (background, timed).
show() { printf '+ %s\n' "$(printf '%q ' "$@")" >&2; }

bench_init() {
    if [[ -z "${BENCH_TMP:-}" ]]; then
        BENCH_TMP="$(mktemp -d /tmp/swarm-bench.XXXXXX)"
        BENCH_TMP_OWNED=1
    else
        mkdir -p "$BENCH_TMP"
        BENCH_TMP_OWNED=0
    fi
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    say "# scratch folder: $BENCH_TMP"
    say "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

bench_cleanup() {
    local rc=$?
    set +e
    local g
    for g in "${BENCH_PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
    local deadline=$((SECONDS + 12)) alive=1
    while ((alive && SECONDS < deadline)); do
        alive=0
        for g in "${BENCH_PGIDS[@]}"; do
            if kill -0 -- "-$g" 2>/dev/null; then alive=1; fi
        done
        ((alive)) && sleep 0.2
    done
    for g in "${BENCH_PGIDS[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
    wait 2>/dev/null
    if [[ "${BENCH_TMP_OWNED:-0}" == 1 && "${KEEP_TMP:-0}" != 1 ]]; then rm -rf "$BENCH_TMP"; fi
    exit "$rc"
}

# bg_start LOGFILE CMD...: runs CMD in a new process group, output to LOGFILE.
# Sets BG_PID (== its process group id).
bg_start() {
    local log="$1"; shift
    show "$@"
    setsid "$@" </dev/null >"$log" 2>&1 &
    BG_PID=$!
    BENCH_PGIDS+=("$BG_PID")
}

# fg_group CMD...: runs CMD in a process group of its own (so that bench_cleanup's
# SIGTERM reaches everything it started), its output to ours; returns its status.
fg_group() {
    show "$@"
    setsid "$@" </dev/null &
    BENCH_PGIDS+=("$!")
    local rc=0
    wait "$!" || rc=$?
    bg_forget "$!"
    return "$rc"
}

# bg_stop PID: SIGTERM its group, wait up to 15 s, then SIGKILL.
bg_stop() {
    local g="$1" i
    kill -TERM -- "-$g" 2>/dev/null || return 0
    for ((i = 0; i < 150; i++)); do
        kill -0 -- "-$g" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$g" 2>/dev/null || true
    wait "$g" 2>/dev/null || true
    bg_forget "$g"
}

# bg_wait PID: waits for a bg_start'ed process to exit by itself; returns its status.
bg_wait() {
    local rc=0
    wait "$1" || rc=$?
    # its group may still hold children; stop them too before forgetting it
    kill -0 -- "-$1" 2>/dev/null && bg_stop "$1"
    bg_forget "$1"
    return "$rc"
}

bg_forget() {
    local kept=() x
    for x in "${BENCH_PGIDS[@]}"; do [[ "$x" == "$1" ]] || kept+=("$x"); done
    BENCH_PGIDS=("${kept[@]}")
}

# ---------------------------------------------------------------- installs

apt_updated=0
need_apt() { # need_apt COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if ((apt_updated == 0)); then run apt-get update -qq >&2; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq "$2" >&2
}

# need_circus: 0 if circusd/circusctl run, else 1 with a note. Not on PATH: installs circus
# from PyPI into a venv ($BENCH_VENV, default /var/tmp/swarm-bench-venv, kept between runs)
# and puts its bin/ on PATH.
BENCH_VENV="${BENCH_VENV:-/var/tmp/swarm-bench-venv}"
need_circus() {
    if ! command -v circusd >/dev/null 2>&1 || ! circusd --version >/dev/null 2>&1; then
        if [[ ! -x "$BENCH_VENV/bin/circusd" ]]; then
            [[ -x "$BENCH_VENV/bin/pip" ]] || run python3 -m venv "$BENCH_VENV" >&2 || true
            run "$BENCH_VENV/bin/pip" install -q circus >&2 || true
        fi
        PATH="$BENCH_VENV/bin:$PATH"
        hash -r
    fi
    if circusd --version >/dev/null 2>&1 && circusctl --help >/dev/null 2>&1; then return 0; fi
    note "circus does not install or run with $(python3 --version 2>&1): skipping it"
    return 1
}

need_swarm() {
    if [[ -z "${SWARM_BIN:-}" ]]; then
        # incremental: quick when the build is up to date, and never benchmarks a stale binary
        # Static, non-PIE: the deployment build (README, Memory): smallest footprint.
        (cd "$REPO_DIR" && run swift build -c release --static-swift-stdlib -Xlinker -no-pie --scratch-path .build-static >&2) ||
            say "# WARNING: the release build failed; using the binaries already in .build-static"
        SWARM_BIN="$REPO_DIR/.build-static/release"
    fi
    SWARMD="$SWARM_BIN/swarmd"
    SWARMCTL="$SWARM_BIN/swarmctl"
    [[ -x "$SWARMD" && -x "$SWARMCTL" ]] || { say "no swarmd/swarmctl in $SWARM_BIN"; return 1; }
    say "# $("$SWARMCTL" --version 2>/dev/null || true) at $SWARM_BIN (git $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo ', dirty tree'))"
}

need_wrk() { need_apt wrk wrk; }
need_supervisor() { need_apt supervisord supervisor; }

# ---------------------------------------------------------------- swarm

# swarm_start NAME CONFIG...: starts a swarmd with its own control socket and
# state dir under $BENCH_TMP/NAME, waits for its socket. Sets SWARMD_PID and
# exports SWARM_SOCKET (the last started daemon).
swarm_start() {
    local name="$1"; shift
    local dir="$BENCH_TMP/$name"
    mkdir -p "$dir/state"
    bg_start "$dir/swarmd.log" "$SWARMD" --socket "$dir/swarmd.sock" --state-dir "$dir/state" --log-target file "$@"
    SWARMD_PID=$BG_PID
    export SWARM_SOCKET="$dir/swarmd.sock"
    local i
    for ((i = 0; i < 200; i++)); do
        [[ -S "$SWARM_SOCKET" ]] && "$SWARMCTL" ping >/dev/null 2>&1 && return 0
        kill -0 "$SWARMD_PID" 2>/dev/null || { cat "$dir/swarmd.log" >&2; return 1; }
        sleep 0.05
    done
    say "swarmd did not answer on $SWARM_SOCKET"; cat "$dir/swarmd.log" >&2; return 1
}

# swarm_wait_ready APP COUNT [TIMEOUT_S]: waits until APP has COUNT ready workers.
swarm_wait_ready() {
    local app="$1" want="$2" timeout="${3:-60}" got
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        got=$("$SWARMCTL" status --json "$app" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["apps"][0]["workers_ready"])' 2>/dev/null || echo 0)
        [[ "$got" == "$want" ]] && return 0
        sleep 0.2
    done
    say "$app: only $got of $want workers ready after ${timeout}s"; return 1
}

# swarm_worker_pids APP: the pids of APP's workers, one a line.
swarm_worker_pids() {
    "$SWARMCTL" status --json "$1" | python3 -c '
import json, sys
for w in json.load(sys.stdin)["apps"][0]["workers"]:
    if w.get("pid"): print(w["pid"])'
}

# ---------------------------------------------------------------- /proc

# cpu_ticks PID...: utime+stime (clock ticks) summed over the pids; missing pids count 0.
cpu_ticks() {
    local t=0 p s
    for p in "$@"; do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) }            # fields after "comm)": state is field 3
        set -- $s
        t=$((t + ${12} + ${13})) # utime, stime: fields 14 and 15
    done
    echo "$t"
}

# rss_kib PID: VmRSS in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# children PID: direct children of PID.
children() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true; }

# pct TICKS SECONDS: ticks as % of one core.
pct() { python3 -c "print(f'{$1 / $CLK_TCK / $2 * 100:.2f}')"; }

now_s() { date +%s.%N; }

# ---------------------------------------------------------------- http / wrk

# wait_http PORT [PATH] [TIMEOUT_S]
wait_http() {
    local port="$1" path="${2:-/health}" timeout="${3:-30}"
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        curl -fsS -m 1 "http://127.0.0.1:$port$path" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    say "nothing answers on 127.0.0.1:$port$path"; return 1
}

# wrk_run OUTFILE WRK-ARGS... : runs wrk with the report script; OUTFILE gets wrk's
# output, whose last line is "WRKJSON {...}" (see wrk-report.lua).
wrk_run() {
    local out="$1"; shift
    run wrk -s "$BENCH_DIR/wrk-report.lua" "$@" >"$out" 2>&1 || { cat "$out" >&2; return 1; }
}

# wrk_field OUTFILE KEY: a field of the WRKJSON line (rps, requests, p50_ms, p99_ms,
# max_ms, errors, connect, read, write, status, timeout, duration_s).
wrk_field() {
    grep '^WRKJSON ' "$1" | tail -1 | cut -d' ' -f2- | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}

# ---------------------------------------------------------------- tables

# print_table TSVFILE: a TSV with a header line, aligned.
print_table() { column -t -s $'\t' "$1"; }

# raise_nofile [N]: soft RLIMIT_NOFILE to N (default 65536), capped at the hard limit.
raise_nofile() {
    local want="${1:-65536}" hard
    hard=$(ulimit -Hn)
    [[ "$hard" != unlimited && "$hard" -lt "$want" ]] && want=$hard
    ulimit -n "$want"
    say "# ulimit -n $(ulimit -n)"
}

# supervisor_conf DIR N MINFDS MINPROCS: DIR/supervisord.conf running N `sleep` programs,
# foreground, control socket in DIR (minprocs 0: supervisord's default).
supervisor_conf() {
    local d=$1 n=$2 minfds=$3 minprocs=$4
    {
        printf '[unix_http_server]\nfile = %s/supervisor.sock\n' "$d"
        printf '[supervisord]\nnodaemon = true\nlogfile = %s/supervisord.log\npidfile = %s/supervisord.pid\nchildlogdir = %s\nminfds = %s\n' "$d" "$d" "$d" "$minfds"
        [[ "$minprocs" == 0 ]] || printf 'minprocs = %s\n' "$minprocs"
        printf '[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n'
        printf '[supervisorctl]\nserverurl = unix://%s/supervisor.sock\n' "$d"
        printf '[program:sleep]\ncommand = sleep 100000\nnumprocs = %s\nprocess_name = %%(program_name)s_%%(process_num)04d\n' "$n"
        printf 'startsecs = 0\nautorestart = true\nstdout_logfile = NONE\nstderr_logfile = NONE\n'
    } >"$d/supervisord.conf"
}

# swarm_conf NAME PORT BALANCE: a config for the Node example app, 2 workers on
# 127.0.0.1:PORT with that balance mode, in $BENCH_TMP; prints its path.
swarm_conf() {
    printf 'name = "%s"\ncommand = ["node", "%s"]\nworkers = 2\n[[socket]]\nname = "http"\nlisten = "127.0.0.1:%s"\nbalance = "%s"\n' \
        "$1" "$NODE_APP" "$2" "$3" >"$BENCH_TMP/$1.conf"
    echo "$BENCH_TMP/$1.conf"
}
