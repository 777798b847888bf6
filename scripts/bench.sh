#!/usr/bin/env bash
# Benchmarks a follower-maze server on named workloads with maze-sim and prints one table
# row per run: events/s, notifications/s, server CPU seconds (user+sys), the share of a
# core that is (CPU over the run's time), server CPU ns per notification, server peak RSS
# (VmHWM), maze-sim's own CPU, delivery latency p50/p99/p99.9/max in microseconds (source
# write of the batch to the verifier's read), and whether verification passed; at the end
# the same rows as a Markdown table with medians (below). eventsPerSecond=N paces the
# source (latency at equal load: at full speed it is mostly queueing); totalEvents=N
# overrides the workload's count (eventsPerSecond=20000 totalEvents=200000
# scripts/bench.sh classic: 10 s).
#
# Each run's row also goes, tab-separated ("-" for no value), to BENCH_OUT/results.tsv
# (BENCH_OUT defaults to target/bench/<UTC timestamp>); at the end bench-report turns it
# into a Markdown table (runs, medians, the goal lines of issue #13: each server's classic
# CPU against the floor's, its 10k-clients CPU per notification against its classic one,
# its paced CPU share and p99 next to the paced floor's), printed and written to
# results.md, and a chart beside it, chart.svg (events/s and server CPU per server and
# workload, latency percentiles at the paced workload).
#
#   scripts/bench.sh [WORKLOAD ...]     default: classic 10k-clients deep-disorder broadcast-heavy
#   RUNS=3 scripts/bench.sh classic     medians of three runs
#   scripts/bench.sh adversarial        work per input byte of each attack (below)
#   SERVERS='ours=./target/release/follower-maze
#            other=java -jar other.jar' scripts/bench.sh classic
#                                       several servers in one invocation, one NAME=COMMAND
#                                       per line, each run against a fresh process of it;
#                                       each gets eventListenerPort / clientListenerPort in
#                                       its env (ours reads them). SERVER_CMD=COMMAND: one.
#
# The process measured is the one started: a port already taken is refused (exit 2), and a
# server that exits, or does not listen on both ports within 10 s, or whose event port is
# held by another process, fails the invocation instead of benchmarking something else.
#
# Runs are interleaved: round 1 of every server and workload, then round 2, and so on.
# BIN=DIR takes the binaries from DIR instead of building target/release (the tests).
#
# Workloads: floor (the classic 10M events through floor-relay, which hands each line to one
# client round-robin: no parsing, ordering or routing; once per round, whatever SERVERS says; with
# classic in the same invocation each server's classic CPU is also shown as a multiple of
# it), floor-paced (floor-relay on the paced workload: the latency of a server that only
# relays, so the instrument's and the machine's own share of a paced p99; once per round
# too), classic (10M events, 100 clients, 1,000 users, batches of 100), paced (the classic
# shape, 1M events paced at eventsPerSecond=100000: latency at equal load, 10 s),
# 10k-clients (2M events, 10,000 clients, 100,000 users), deep-disorder (2M events,
# batches of 200,000), broadcast-heavy (2M events, 5% broadcasts), soak (100M events,
# server RSS sampled every second). Each run gets a fresh server.
#
# adversarial: each attack of maze-sim's adversarial scenario against a fresh server, one
# row per attack: input bytes sent (both ports), server CPU s (user+sys while the attack
# ran), server CPU ns per input byte, the server's longest loop turn (longest_turn_us= of
# its last "final stats:" line after SIGTERM; "-" when it logs none), peak RSS (VmHWM),
# and the freeze probe's p50 and max latency (connect, send an invalid id, time until the
# server closes). ADV_ATTACKS picks attacks; attack sizes are maze-sim's variables
# (farLines=1000 scripts/bench.sh adversarial); ADV_TIMEOUT_MS (60000) bounds each wait;
# ADV_VERBOSE=1 adds maze-sim's summary line. adversarial-smoke: every attack, tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
fi
BIN=${BIN:-./target/release}
RUNS=${RUNS:-1}
EPORT=${BENCH_EVENT_PORT:-19090}
CPORT=${BENCH_CLIENT_PORT:-19099}
OURS="$BIN/follower-maze --stats-interval-s 0"
SERVERS=${SERVERS:-${SERVER_CMD:+custom=$SERVER_CMD}}
SERVERS=${SERVERS:-ours=$OURS}
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(classic 10k-clients deep-disorder broadcast-heavy)

workload_env() {
  case "$1" in
    classic) echo "totalEvents=10000000 concurrencyLevel=100 numberOfUsers=1000" ;;
    10k-clients) echo "totalEvents=2000000 concurrencyLevel=10000 numberOfUsers=100000" ;;
    deep-disorder) echo "scenario=deep-disorder totalEvents=2000000 maxEventSourceBatchSize=200000" ;;
    broadcast-heavy) echo "totalEvents=2000000 broadcastPermille=50" ;;
    soak) echo "scenario=soak totalEvents=100000000" ;;
    floor) echo "scenario=floor totalEvents=10000000 concurrencyLevel=100 numberOfUsers=1000" ;;
    paced) echo "totalEvents=1000000 concurrencyLevel=100 numberOfUsers=1000 eventsPerSecond=100000" ;;
    floor-paced) echo "scenario=floor totalEvents=1000000 concurrencyLevel=100 numberOfUsers=1000 eventsPerSecond=100000" ;;
    *) echo "unknown workload: $1" >&2; exit 2 ;;
  esac
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts server command $1 (stderr to file $2) with the port variables in its environment
# and sets $pid, once the process started is the one listening on both ports.
start_server() {
  for p in "$EPORT" "$CPORT"; do
    if listening "$p"; then
      echo "bench.sh: port $p is already taken: refusing to measure whatever holds it" >&2
      exit 2
    fi
  done
  eventListenerPort=$EPORT clientListenerPort=$CPORT bash -c "exec $1" 2>"$2" &
  pid=$!
  for _ in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench.sh: the server exited before listening: $(tail -n 2 "$2")" >&2
      exit 1
    fi
    if listening "$EPORT" && listening "$CPORT"; then
      if command -v ss >/dev/null && ! ss -ltnpH "sport = :$EPORT" | grep -q "pid=$pid,"; then
        echo "bench.sh: port $EPORT is not held by the server started (pid $pid)" >&2
        kill "$pid"
        exit 1
      fi
      return 0
    fi
    sleep 0.05
  done
  echo "bench.sh: the server did not listen on $EPORT and $CPORT within 10 s" >&2
  kill "$pid"
  exit 1
}

# Prints the value of KEY from a key=value summary line.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
# The same, or "-" when the line has no such key (a table cell is never empty).
cell() { local v; v=$(field "$1" "$2"); echo "${v:--}"; }

row() { printf '%-12s %-16s %-6s %12s %14s %12s %9s %11s %14s %10s %9s %9s %9s %9s %s\n' "$@"; }

BENCH_OUT=${BENCH_OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
TSV=$BENCH_OUT/results.tsv
# Appends one run's cells to the TSV, which each invocation starts afresh (bench-report
# refuses a run seen twice) at its first row: an adversarial-only invocation leaves none.
tsv_row() {
  if [ -z "${tsv_started:-}" ]; then
    mkdir -p "$BENCH_OUT"
    echo "server workload run events_per_s notifications_per_s server_cpu_s cpu_share ns_per_note server_rss_kib" \
      "sim_cpu_s p50_us p99_us p999_us max_us result" | tr ' ' '\t' >"$TSV"
    tsv_started=1
  fi
  (IFS=$'\t'; echo "$*") >>"$TSV"
}

ADV_ATTACKS=${ADV_ATTACKS:-far-ahead far-ahead-max follow-storm follow-churn disconnect-storm zero-padded chatty}

adv_row() { printf '%-12s %-17s %-4s %12s %13s %12s %16s %13s %13s %13s %s\n' "$@"; }

# Stops server $1 with SIGTERM and waits for it to exit (SIGKILL after 15 s).
stop_server() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# One fresh server per attack; the server's stderr is kept for its final stats line.
# With "smoke": every attack at a tiny size, a few seconds in all (does each still pass?).
ADV_SMOKE="farLines=50 followCount=200 churnFollowers=2000 stormConnections=200 stormFollows=100
  paddedEvents=2000 chattyClients=4 chattyBytes=1000000 chattyEvents=5000 chattyMs=500"
adversarial() {
  local sizes=
  [ "${1:-}" != smoke ] || sizes=$ADV_SMOKE
  # The disconnect storm holds thousands of connections on both sides.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  adv_row server attack run input_bytes server_cpu_s ns_per_byte longest_turn_ms peak_rss_kib probe_p50_ms probe_max_ms result
  for a in $ADV_ATTACKS; do
    for run in $(seq 1 "$RUNS"); do
      log=$(mktemp)
      start_server "$cmd" "$log"
      summary=$(env $sizes eventListenerPort=$EPORT clientListenerPort=$CPORT logLevel=${logLevel:-info} \
        timeout=${ADV_TIMEOUT_MS:-60000} "$BIN/maze-sim" --scenario adversarial \
        --attack "$a" --server-pid "$pid" 2>"$log.sim" | tail -n 1) || true
      stop_server "$pid"
      turn=$(grep 'final stats:' "$log" | tail -n 1 | tr ' ' '\n' | sed -n 's/^longest_turn_us=//p')
      turn=$(awk -v t="$turn" 'BEGIN { if (t == "") print "-"; else printf "%.1f", t / 1000 }')
      adv_row "$name" "$a" "$run" "$(field input_bytes "$summary")" "$(field server_cpu_s "$summary")" \
        "$(field server_ns_per_byte "$summary")" "$turn" "$(field server_peak_rss_kib "$summary")" \
        "$(field probe_p50_ms "$summary")" "$(field probe_max_ms "$summary")" "$(field result "$summary")"
      [ "$(field result "$summary")" = pass ] || { echo "--- maze-sim:"; tail -5 "$log.sim"; }
      [ -z "${ADV_VERBOSE:-}" ] || { echo "  $summary"; sed -n 's/^\[INFO\] round/  round/p' "$log.sim"; }
      rm -f "$log" "$log.sim"
    done
  done
}

# Runs are interleaved (round 1 of every server and workload, then round 2, ...): the
# machine's load drifts over minutes, and a ratio (a server against the floor, maze-sim
# against a server) is then taken between neighbouring runs, not between the start and
# the end of the invocation.
header=
for run in $(seq 1 "$RUNS"); do
  floors_done=
  while IFS= read -r entry; do
    [ -n "${entry// }" ] || continue
    name=${entry%%=*}
    cmd=${entry#*=}
    for w in "${workloads[@]}"; do
      # The floor is the relay's, not a server's: measured once per round.
      server_name=$name server_cmd=$cmd
      if [ "$w" = floor ] || [ "$w" = floor-paced ]; then
        [[ " $floors_done " != *" $w "* ]] || continue
        floors_done="$floors_done $w"
        server_name=floor server_cmd=$BIN/floor-relay
      fi
      if [ "$w" = adversarial ] || [ "$w" = adversarial-smoke ]; then
        # Its own table, with its own RUNS loop: once per invocation.
        [ "$run" = 1 ] || continue
        adversarial "${w#adversarial-}"
        header=
        continue
      fi
      [ -n "$header" ] || { row server workload run events/s notifications/s server_cpu_s cpu_share ns_per_note server_rss_kib sim_cpu_s p50_us p99_us p999_us max_us result; header=1; }
      envs=$(workload_env "$w")
      log=$(mktemp)
      start_server "$server_cmd" "$log"
      level=warn; [ "$w" = soak ] && level=info # the soak's RSS samples are info lines
      summary=$(env $envs ${eventsPerSecond:+eventsPerSecond=$eventsPerSecond} \
        ${totalEvents:+totalEvents=$totalEvents} eventListenerPort=$EPORT clientListenerPort=$CPORT logLevel=$level \
        "$BIN/maze-sim" --server-pid "$pid" 2>>"$log.sim" | tail -n 1) || true
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      elapsed=$(field elapsed_s "$summary")
      notes=$(field notifications "$summary")
      nps=$(awk -v n="$notes" -v t="$elapsed" 'BEGIN { if (t > 0) printf "%.0f", n / t; else print "-" }')
      result=$(field result "$summary")
      # The cell as printed; `cpu` the value, "-" when it is not a number.
      cpu_cell=$(cell server_cpu_s "$summary")
      cpu=$cpu_cell
      # A run whose server CPU could not be read measured nothing: not a pass.
      [[ "$cpu" =~ ^[0-9.]+$ ]] || { result="fail(no-server-cpu)"; cpu=-; }
      # The goals' units: the share of a core over the run, and CPU per notification.
      share=$(awk -v c="$cpu" -v t="$elapsed" 'BEGIN { if (c != "-" && t > 0) printf "%.2f", c / t; else print "-" }')
      ns_note=$(awk -v c="$cpu" -v n="$notes" 'BEGIN { if (c != "-" && n > 0) printf "%.0f", c * 1e9 / n; else print "-" }')
      r=("$server_name" "$w" "$run" "$(cell events_per_s "$summary")" "$nps" "$cpu_cell" "$share" "$ns_note" \
         "$(cell server_peak_rss_kib "$summary")" "$(cell sim_cpu_s "$summary")" \
         "$(cell latency_p50_us "$summary")" "$(cell latency_p99_us "$summary")" \
         "$(cell latency_p999_us "$summary")" "$(cell latency_max_us "$summary")" "$result")
      row "${r[@]}"
      tsv_row "${r[@]}"
      [ "$result" = pass ] || { echo "--- maze-sim:"; tail -5 "$log.sim"; }
      if [ "$w" = soak ]; then
        # The samples maze-sim logged: t, RSS KiB, server CPU seconds so far.
        echo "rss samples (t rss_kib cpu_s):"
        sed -n 's/.*rss_sample t=\([0-9]*\)s rss_kib=\([0-9]*\) cpu_s=\([0-9.]*\).*/  \1 \2 \3/p' "$log.sim" | paste -sd ';'
      fi
      rm -f "$log" "$log.sim"
    done
  done <<<"$SERVERS"
done
# The report of every row above (the adversarial table is its own): medians, and each
# server's classic CPU as a multiple of the floor's, are bench-report's alone.
if [ -n "${tsv_started:-}" ]; then
  echo
  table=$("$BIN/bench-report" "$TSV" --svg "$BENCH_OUT/chart.svg")
  echo "$table"
  {
    echo "# bench.sh ${workloads[*]}"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), RUNS=$RUNS${totalEvents:+ totalEvents=$totalEvents}${eventsPerSecond:+ eventsPerSecond=$eventsPerSecond}"
    echo
    echo "$table"
    echo
    echo "![events/s, server CPU and paced latency](chart.svg)"
  } >"$BENCH_OUT/results.md"
  echo
  echo "results: $TSV $BENCH_OUT/results.md $BENCH_OUT/chart.svg"
fi
