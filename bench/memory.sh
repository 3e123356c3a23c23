#!/usr/bin/env bash
# Idle memory (VmRSS) of the supervising process:
#   swarmd with 2 and with 100 `sleep` workers (no socket, [ready] mode = "delay")
#   circusd with 2 and 100 `sleep` processes (skipped if circus won't install/run)
#   supervisord (Debian `supervisor`) with 2 and 100 `sleep` programs
#   Node cluster primary (bench/peers/node-cluster.js) with 2 workers of the example app
# Each daemon runs alone; RSS is read SETTLE seconds after every worker is up, and
# for swarmd also after a `swarmctl status --json` call. Target: swarmd < 10 MiB.
#
# Knobs: SETTLE (s, default 3), COUNTS (default "2 100"), PORT_BASE (default 18200).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SETTLE="${SETTLE:-3}"
COUNTS="${COUNTS:-2 100}"
PORT_BASE="${PORT_BASE:-18200}"

bench_init
need_swarm
need_supervisor
have_circus=1
need_circus || have_circus=0
raise_nofile

out="$BENCH_TMP/memory.tsv"
printf 'daemon\tworkers\tVmRSS_KiB\tVmRSS_MiB\tRssAnon_KiB\tRssFile_KiB\tPss_KiB\tnote\n' >"$out"
add() { # DAEMON N PID NOTE
    local kib anon file
    kib=$(rss_kib "$3")
    anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$3/status")
    file=$(awk '/^RssFile:/ {print $2}' "/proc/$3/status")
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$3/smaps_rollup" 2>/dev/null || echo -)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$kib" "$(python3 -c "print(f'{$kib/1024:.1f}')")" "$anon" "$file" "$pss" "$4" >>"$out"
    say "  $1 workers=$2 VmRSS=${kib} KiB (anon $anon, file $file) $4"
}
count_children() { children "$1" | wc -l; }
wait_children() { # PID N: wait until PID has N children (30 s)
    local i
    for ((i = 0; i < 300; i++)); do
        (($(count_children "$1") >= $2)) && return 0
        sleep 0.1
    done
    say "pid $1 has $(count_children "$1") of $2 children"; return 1
}

for n in $COUNTS; do
    # --- swarmd
    conf="$BENCH_TMP/sleep$n.conf"
    cat >"$conf" <<EOF
name = "sleep$n"
command = ["sleep", "100000"]
workers = $n
[ready]
mode = "delay"
delay = "0s"
EOF
    swarm_start "swarm$n" "$conf"
    swarm_wait_ready "sleep$n" "$n"
    sleep "$SETTLE"
    add swarmd "$n" "$SWARMD_PID" "idle"
    run "$SWARMCTL" status --json >/dev/null
    sleep 0.5
    add swarmd "$n" "$SWARMD_PID" "after one status --json"
    bg_stop "$SWARMD_PID"

    # --- supervisord
    d="$BENCH_TMP/supervisor$n"
    mkdir -p "$d"
    supervisor_conf "$d" "$n" 4096 0
    bg_start "$d/out.log" supervisord -c "$d/supervisord.conf"
    spid=$BG_PID
    wait_children "$spid" "$n"
    sleep "$SETTLE"
    add supervisord "$n" "$spid" "idle"
    bg_stop "$spid"

    # --- circusd
    if ((have_circus)); then
        d="$BENCH_TMP/circus$n"
        mkdir -p "$d"
        cat >"$d/circus.ini" <<EOF
[circus]
endpoint = ipc://$d/ctl.sock
pubsub_endpoint = ipc://$d/pub.sock
check_delay = 5
[watcher:sleep]
cmd = sleep 100000
numprocesses = $n
EOF
        bg_start "$d/out.log" circusd "$d/circus.ini"
        cpid=$BG_PID
        wait_children "$cpid" "$n"
        sleep "$SETTLE"
        add circusd "$n" "$cpid" "idle"
        bg_stop "$cpid"
    fi
done

# --- Node cluster primary, 2 workers of the example app
bg_start "$BENCH_TMP/cluster.log" env PORT=$((PORT_BASE + 1)) HOST=127.0.0.1 WORKERS=2 node "$BENCH_DIR/peers/node-cluster.js"
npid=$BG_PID
wait_http $((PORT_BASE + 1))
sleep "$SETTLE"
add node-cluster-primary 2 "$npid" "idle, example app workers"
bg_stop "$npid"

echo
echo "## VmRSS of the supervising process (target: swarmd < 10 MiB); RssFile = mapped files"
echo "## (shared libraries: for swarmd the Swift runtime and Foundation), Pss = shared pages split"
print_table "$out"
