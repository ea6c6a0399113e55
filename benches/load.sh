#!/usr/bin/env bash
# The load and scale benchmark of issue #8. One command, on loopback:
#   benches/load.sh [--quick] [--no-build]
# Starts a fast upstream (benches/fast_upstream.rs), a Pingora passthrough floor
# (benches/floor_proxy.rs) and switchyard (release build, full pipeline), drives each with wrk
# and benches/stream_probe.rs, and writes benches/RESULTS.md (also printed). Everything shares
# the machine's cores; nothing is pinned but for one set of one-connection rounds. `--quick`:
# short runs, for development only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0 BUILD=1
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    *) echo "usage: benches/load.sh [--quick] [--no-build]" >&2; exit 2 ;;
  esac
done
# PAIRS turns of PAIR_DUR s each, side by side at 32 connections: floor vs switchyard, and 10 vs
# 100k consumers. Single turns on this VM move by ±15 % between neighbours; the median of 10 ratios
# can tell a 5 % change, the median of 3 could not.
# BURSTS admin bursts, each with a control of the same length and no writes: a 10 s window on
# this VM moves by ±8 % by itself, and three bursts could not tell a 5 % drop from noise.
if ((QUICK)); then DUR=3 WARM=1 RUNS=3 WIN=3 C1_ROUNDS=3 PAIRS=3 PAIR_DUR=1 BURSTS=3
else DUR=30 WARM=3 RUNS=10 WIN=10 C1_ROUNDS=6 PAIRS=10 PAIR_DUR=3 BURSTS=7; fi
STREAMS=2000 CONSUMERS=100000 WRITES=1000
BODY='{"model":"gpt-bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}'
TOKEN=bench-admin-token-0123456789

# 2,000 streams need ~4,000 descriptors in switchyard and 2,000 in each of the others.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= 8192)) || { echo "ulimit -n is $(ulimit -n); need 8192 for $STREAMS streams" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
if ((BUILD)); then
  flock /tmp/switchyard-cargo.lock cargo build --release --bin switchyard \
    --example fast_upstream --example floor_proxy --example stream_probe
  flock /tmp/switchyard-cargo.lock cargo bench --bench hot_path --no-run
fi
SYBIN=$ROOT/target/release/switchyard
PROBE=$ROOT/target/release/examples/stream_probe
HOT=$(find target/release/deps -maxdepth 1 -name 'hot_path-*' -type f -executable -printf '%T@ %p\n' |
  sort -n | tail -1 | cut -d' ' -f2)  # the criterion benches, newest build

LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)  # other work on the machine skews every number
# CPU time the hypervisor gave to other guests ("steal", in ticks), over the whole run.
steal() { awk '/^cpu / { print $9 }' /proc/stat; }
STEAL0=$(steal) T0=$(date +%s)
W=$(mktemp -d /tmp/switchyard-bench.XXXXXX) R=$W/results
mkdir -p "$R"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [[ -z ${KEEP:-} ]]; then rm -rf "$W"; else echo "kept $W" >&2; fi
}
trap cleanup EXIT
log() { echo "[$(date +%T)] $*" >&2; }
# start LOG CMD...: runs CMD in the background; its pid in $LAST.
start() { local out=$1; shift; "$@" >"$out" 2>&1 & LAST=$!; PIDS+=("$LAST"); }
stop() { kill -TERM "$1" 2>/dev/null || true; for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null || true; }
vm() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
now() { date +%s.%N; }
read -r UP FL SY AD SY2 AD2 < <(python3 -c 'import socket
s=[socket.socket() for _ in range(6)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

sy_start() { # DATA_DIR NAME: switchyard on $SY/$AD; pid in $SYPID, start-up ms in $READY_MS
  cat >"$W/$2.yaml" <<EOF
data_dir: $1
threads: 2
proxy: {listen: ["127.0.0.1:$SY"], h2c: ${SY_H2C:-false}}
admin: {listen: "127.0.0.1:$AD", token: "$TOKEN"}
log: {format: json, level: info}
shutdown: {drain_delay_ms: 0, grace_period_s: 1, shutdown_timeout_s: 1}
EOF
  local t0; t0=$(date +%s%N)
  start "$W/$2.log" "$SYBIN" run --config "$W/$2.yaml"; SYPID=$LAST
  READY_MS=$("$PROBE" ready "127.0.0.1:$SY" --since-ns "$t0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ready_ms"])')
  until curl -sf "http://127.0.0.1:$AD/healthz" >/dev/null; do sleep 0.02; done
}

# wrk_run NAME URL PATH CONNS SECONDS: writes $R/NAME.json (unless NAME is -)
wrk_run() {
  local threads=$(($4 > 1 ? 2 : 1))
  local pin=(); [[ -z ${PIN:-} ]] || pin=(taskset -c "$PIN")
  BENCH_PATH=$3 BENCH_KEY=$KEY BENCH_BODY=$BODY \
    "${pin[@]}" wrk -t"$threads" -c"$4" -d"$5"s --timeout 5s -s benches/post.lua "$2" >"$W/wrk.out"
  local json; json=$(sed -n 's/^WRKJSON //p' "$W/wrk.out")
  [[ $1 == - ]] || echo "$json" >"$R/$1.json"
  log "  $1 c$4: $json"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# cpu_of NAME PID CMD...: runs CMD; PID's CPU time meanwhile goes to $R/cpu_NAME.json
cpu_of() {
  local t0; t0=$(cpu_ticks "$2")
  "${@:3}"
  echo "{\"ticks\": $(($(cpu_ticks "$2") - t0)), \"hz\": $(getconf CLK_TCK)}" >"$R/cpu_$1.json"
}
load_target() { # NAME URL PATH PID [C1]: PID's CPU time over the 32-connection run, too
  log "load: $1"
  wrk_run - "$2" "$3" 32 "$WARM"
  [[ ${5:-1} == 0 ]] || wrk_run "load_$1_c1" "$2" "$3" 1 "$DUR"
  cpu_of "$1" "$4" wrk_run "load_$1_c32" "$2" "$3" 32 "$DUR"
}
# take_turns PREFIX "NAME URL PATH PID" "NAME URL PATH PID": $PAIRS turns at 32 connections, the
# order swapped every turn (AB BA AB ...) so the host's drift lands on both; each run's CPU time too.
take_turns() {
  local prefix=$1 i t name url path pid; shift
  for i in $(seq "$PAIRS"); do
    local turn=("$1" "$2"); ((i % 2)) || turn=("$2" "$1")
    for t in "${turn[@]}"; do
      read -r name url path pid <<<"$t"
      cpu_of "${prefix}_${name}_$i" "$pid" wrk_run "${prefix}_${name}_$i" "$url" "$path" 32 "$PAIR_DUR"
    done
  done
}

# --- the hot functions (criterion), first, while nothing else runs --------------------------
if [[ -n $HOT ]]; then
  log "criterion: $HOT"
  CRIT_ARGS=(--bench --noplot)
  ((QUICK)) && CRIT_ARGS+=(--warm-up-time 1 --measurement-time 2)
  CRITERION_HOME=$W/criterion "$HOT" "${CRIT_ARGS[@]}" >"$W/criterion.log" 2>&1
  python3 - "$W/criterion" "$R/criterion.json" <<'EOF'
import json, os, sys
out = {}
for d in sorted(os.listdir(sys.argv[1])):
    new = os.path.join(sys.argv[1], d, "new")
    if os.path.exists(os.path.join(new, "estimates.json")):
        name = json.load(open(os.path.join(new, "benchmark.json")))["full_id"]
        e = json.load(open(os.path.join(new, "estimates.json")))
        out[name] = {"median_ns": e["median"]["point_estimate"], "mean_ns": e["mean"]["point_estimate"]}
json.dump(out, open(sys.argv[2], "w"))
EOF
else
  log "criterion: no build of benches/hot_path.rs (run without --no-build once)"
fi

# --- the three processes ------------------------------------------------------------------
log "work dir $W; ports upstream $UP floor $FL switchyard $SY admin $AD"
start "$W/upstream.log" target/release/examples/fast_upstream "127.0.0.1:$UP"; UPPID=$LAST
start "$W/floor.log" target/release/examples/floor_proxy "127.0.0.1:$FL" "127.0.0.1:$UP" 2; FLPID=$LAST
sy_start "$W/small" small
python3 benches/bench.py seed "http://127.0.0.1:$AD" "$TOKEN" "$UP" 10 "$W/seed.json"
seed() { python3 -c "import json; s=json.load(open('$W/seed.json')); print($1)"; }
GID=$(seed 's["gateway"]') SLUG=$(seed 's["consumers"][0]["slug"]') KEY=$(seed 's["consumers"][0]["key"]')
OTHER=$(seed 's["consumers"][1]["id"]') TSLUG=$(seed 's["translated"]["slug"]') TKEY=$(seed 's["translated"]["key"]')
until curl -sf "http://127.0.0.1:$FL/v1/chat/completions" -d "$BODY" >/dev/null; do sleep 0.05; done
RSS_JSON="{}"
rss() { RSS_JSON=$(python3 -c "import json; d=json.loads('$RSS_JSON'); d['$1']=$2; print(json.dumps(d))"); }

# --- requests ---------------------------------------------------------------------------
load_target direct "http://127.0.0.1:$UP" /v1/chat/completions "$UPPID" 0
load_target floor "http://127.0.0.1:$FL" /v1/chat/completions "$FLPID" 0
rss floor "$(vm "$FLPID" VmHWM)"
load_target sy10 "http://127.0.0.1:$SY" "/$SLUG/v1/chat/completions" "$SYPID" 0
# One connection: the three targets take turns, $C1_ROUNDS runs each, so that a disturbance of
# the machine (this VM has them) lands on all three instead of on one whole run. Each
# target's p50 and p99 are the medians over its runs.
log "load: one connection, $C1_ROUNDS rounds"
c1_rounds() { # PREFIX: $C1_ROUNDS turns of the three, then load_<target>_<PREFIX>.json
  local secs=${C1_SECS:-$((DUR / C1_ROUNDS))}
  for r in $(seq "$C1_ROUNDS"); do
    wrk_run "$1_direct_$r" "http://127.0.0.1:$UP" /v1/chat/completions 1 "$secs"
    wrk_run "$1_floor_$r" "http://127.0.0.1:$FL" /v1/chat/completions 1 "$secs"
    wrk_run "$1_sy10_$r" "http://127.0.0.1:$SY" "/$SLUG/v1/chat/completions" 1 "$secs"
  done
  python3 - "$R" "$C1_ROUNDS" "$1" <<'EOF'
import json, statistics, sys
r, n, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for t in ("direct", "floor", "sy10"):
    runs = [json.load(open("%s/%s_%s_%d.json" % (r, prefix, t, i + 1))) for i in range(n)]
    out = {k: sum(x[k] for x in runs) for k in ("requests", "duration_us", "errors", "non2xx")}
    for k in ("p50_us", "p99_us"):
        out[k] = statistics.median(x[k] for x in runs)
    out["rounds"] = n
    json.dump(out, open("%s/load_%s_%s.json" % (r, t, prefix), "w"))
EOF
}
c1_rounds c1
# The same on one core: the upstream, both proxies and wrk pinned to one CPU for these rounds.
# On this VM a wake-up that crosses to the other, idle vCPU costs tens of µs (the direct
# round trip is ~5x longer across two cores than on one), and which hops cross decides most
# of the latency at one connection. On one core nothing crosses: what is left is each
# process's own time on the request's path. Informational, next to the target's runs above.
if (($(nproc) > 1)); then
  log "load: one connection, all on one core, $C1_ROUNDS rounds"
  CPUS=$(taskset -pc $$ | awk '{ print $NF }') # e.g. 0-1 or 0,2-3
  ONE=${CPUS%%[,-]*}
  for p in "$UPPID" "$FLPID" "$SYPID"; do taskset -apc "$ONE" "$p" >/dev/null; done
  PIN=$ONE c1_rounds c1core
  # Across two cores, the kernel puts each of the three (client, proxy, upstream) where it
  # finds an idle core, and which pair ends up sharing one decides which hops cross; it need
  # not choose the same for the floor as for switchyard. Here each pairing is set by hand, the
  # same for both proxies: the client alone, the upstream alone, the proxy alone.
  # Informational, like the one-core rounds.
  TWO=$(python3 -c "import os; c = sorted(os.sched_getaffinity(0)); print(c[1])")
  log "load: one connection, each placement on two cores by hand"
  for place in "client $ONE $ONE $TWO" "upstream $TWO $ONE $ONE" "proxy $ONE $TWO $ONE"; do
    read -r name up_cpu proxy_cpu client_cpu <<<"$place"
    taskset -apc "$up_cpu" "$UPPID" >/dev/null
    for p in "$FLPID" "$SYPID"; do taskset -apc "$proxy_cpu" "$p" >/dev/null; done
    C1_ROUNDS=2 C1_SECS=$(((DUR + 5) / 6)) PIN=$client_cpu c1_rounds "alone_$name"
  done
  for p in "$UPPID" "$FLPID" "$SYPID"; do taskset -apc "$CPUS" "$p" >/dev/null; done
fi
rss sy10 "$(vm "$SYPID" VmHWM)"
# At 32 connections too, the floor and switchyard take turns ($PAIRS of $PAIR_DUR s each):
# the target's ratio is the median of the turns' ratios, so the host's drift between two long
# runs (this VM's floor alone moves 12.8k-17.0k req/s between windows) lands on both.
log "load: 32 connections, floor and switchyard in $PAIRS turns"
take_turns c32 "floor http://127.0.0.1:$FL /v1/chat/completions $FLPID" \
  "sy10 http://127.0.0.1:$SY /$SLUG/v1/chat/completions $SYPID"

# --- streams ----------------------------------------------------------------------------
# Passthrough and translated streams take turns in one series (each run in a rotated order),
# as the floor and switchyard do: the target compares the two, and run apart they were minutes
# apart, where the host's wake-up latency drifts by more than the translation costs.
log "streams: passthrough and translated, taking turns"
"$PROBE" stream "direct=127.0.0.1:$UP/v1/chat/completions#$KEY" "floor=127.0.0.1:$FL/v1/chat/completions#$KEY" \
  "switchyard=127.0.0.1:$SY/$SLUG/v1/chat/completions#$KEY" \
  "a_direct@a_direct=127.0.0.1:$UP/v1/messages#$TKEY" "a_floor@a_direct=127.0.0.1:$FL/v1/messages#$TKEY" \
  "a_switchyard@a_direct=127.0.0.1:$SY/$TSLUG/v1/chat/completions#$TKEY" \
  --runs "$RUNS" --model sse-500-1 >"$W/streams.json"
python3 - "$W/streams.json" "$R" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for kind, prefix in (("openai", ""), ("anthropic", "a_")):
    json.dump({t: d[prefix + t] for t in ("direct", "floor", "switchyard")},
              open("%s/stream_%s.json" % (sys.argv[2], kind), "w"))
EOF

# --- admin writes under load ------------------------------------------------------------
log "admin: $BURSTS bursts of $WRITES writes under load"
count() { curl -s "http://127.0.0.1:$AD/metrics" | awk '/^switchyard_requests_total/ { s += $NF } END { printf "%d", s }'; }
BENCH_PATH=/$SLUG/v1/chat/completions BENCH_KEY=$KEY BENCH_BODY=$BODY \
  wrk -t2 -c32 -d900s --timeout 5s -s benches/post.lua "http://127.0.0.1:$SY" >/dev/null &
WRKPID=$!; PIDS+=("$WRKPID")
sleep "$WARM"
# Quiet window, burst, quiet window, control, quiet window, burst, ...: each burst (and each
# control, a pause of a burst's length with no writes) is compared with the windows on either
# side of it, so the proxy's drift over the run cancels; bursts and controls alternate, so both
# sample the same stretch of the host's noise.
marks="$(count) $(now)"; sleep "$WIN"; marks="$marks $(count) $(now)"
for b in $(seq "$BURSTS"); do
  "$PROBE" admin "127.0.0.1:$AD/v1/gateways/$GID/consumers/$OTHER" --token "$TOKEN" --n "$WRITES" >"$W/admin_$b.json"
  marks="$marks $(count) $(now)"; sleep "$WIN"; marks="$marks $(count) $(now)"
  sleep "$(python3 -c "import json; print(json.load(open('$W/admin_$b.json'))['seconds'])")"
  marks="$marks $(count) $(now)"; sleep "$WIN"; marks="$marks $(count) $(now)"
done
kill "$WRKPID"; wait "$WRKPID" 2>/dev/null || true
python3 - "$W" "$R/admin.json" "$BURSTS" "$marks" <<'EOF'
import json, sys
w, out, n, m = sys.argv[1], sys.argv[2], int(sys.argv[3]), list(map(float, sys.argv[4].split()))
pts = list(zip(m[0::2], m[1::2]))  # (count, time) at each window edge
rate = lambda a, b: (pts[b][0] - pts[a][0]) / (pts[b][1] - pts[a][1])
def windows(i):  # the rate without (both sides) and during window i
    before, during, after = rate(2 * i, 2 * i + 1), rate(2 * i + 1, 2 * i + 2), rate(2 * i + 2, 2 * i + 3)
    return (before + after) / 2, during
bursts, control = [], []
for i in range(n):  # burst i is window 2i, its control window 2i + 1
    d = json.load(open("%s/admin_%d.json" % (w, i + 1)))
    d["rps_without"], d["rps_during"] = windows(2 * i)
    bursts.append(d)
    without, during = windows(2 * i + 1)
    control.append({"rps_without": without, "rps_during": during, "seconds": d["seconds"]})
json.dump({"bursts": bursts, "control": control}, open(out, "w"))
EOF
log "  $(cat "$R/admin.json")"

# --- open streams (fresh processes) -----------------------------------------------------
# hold_streams NAME TARGET PID [ARGS...]: a short warm-up stream, then $STREAMS streams held
# open through TARGET (`host:port/path#key`) while PID's RSS is read; writes $R/hold_NAME.json.
hold_streams() {
  local name=$1 target=$2 pid=$3; shift 3
  "$PROBE" stream "warm=$target" --runs 2 --model sse-5-1 >/dev/null
  "$PROBE" hold "$target" --n "$STREAMS" --pid "$pid" --model sse-60-500 "$@" >"$R/hold_$name.json"
  log "  $(cat "$R/hold_$name.json")"
}
# floor_restart [VAR=VALUE...]: a fresh floor with that environment; pid in $FLPID.
floor_restart() {
  stop "$FLPID"
  start "$W/floor.log" env "$@" target/release/examples/floor_proxy "127.0.0.1:$FL" "127.0.0.1:$UP" 2; FLPID=$LAST
  until curl -sf "http://127.0.0.1:$FL/v1/chat/completions" -d "$BODY" >/dev/null; do sleep 0.05; done
}
H2C_CONNS=$((STREAMS / 100))  # 100 streams on each, the most Pingora lets one connection carry
stop "$SYPID"
sy_start "$W/small" small2; READY_10=$READY_MS RSS_READY_10=$(vm "$SYPID" VmRSS)
"$PROBE" admin "127.0.0.1:$AD/v1/gateways/$GID/consumers/$OTHER" --token "$TOKEN" --n 200 >"$R/admin_idle_10.json"
log "open streams: switchyard (restarted, ready in $READY_10 ms)"
hold_streams switchyard "127.0.0.1:$SY/$SLUG/v1/chat/completions#$KEY" "$SYPID"
# The same streams from a load balancer speaking HTTP/2 without TLS (`proxy.h2c`).
stop "$SYPID"
SY_H2C=true sy_start "$W/small" small_h2c
log "open streams over h2c: switchyard"
hold_streams switchyard_h2c "127.0.0.1:$SY/$SLUG/v1/chat/completions#$KEY" "$SYPID" --h2c "$H2C_CONNS"
floor_restart
log "open streams: floor"
hold_streams floor "127.0.0.1:$FL/v1/chat/completions#$KEY" "$FLPID"
# The same floor without Pingora's 64 KiB read buffer under each client connection, which
# switchyard turns off: what Pingora itself keeps per open stream.
floor_restart FLOOR_L4_READ_BUFFER=0
log "open streams: floor without the L4 read buffer"
hold_streams floor_unbuffered "127.0.0.1:$FL/v1/chat/completions#$KEY" "$FLPID"
floor_restart FLOOR_H2C=1 FLOOR_L4_READ_BUFFER=0
log "open streams over h2c: floor"
hold_streams floor_h2c "127.0.0.1:$FL/v1/chat/completions#$KEY" "$FLPID" --h2c "$H2C_CONNS"

# --- scale: 100k consumers --------------------------------------------------------------
stop "$SYPID"
log "scale: export, grow to $CONSUMERS consumers, import"
"$SYBIN" export --config "$W/small.yaml" -o "$W/small-export.json"
sed "s#data_dir: .*#data_dir: $W/big#" "$W/small.yaml" >"$W/big.yaml"
g0=$(now); python3 benches/bench.py bigstore "$W/small-export.json" "$CONSUMERS" "$W/big-export.json"; g1=$(now)
"$SYBIN" import --config "$W/big.yaml" -f "$W/big-export.json" >"$W/import.log" 2>&1; g2=$(now)
sy_start "$W/big" big; READY_BIG=$READY_MS RSS_READY_BIG=$(vm "$SYPID" VmRSS)
log "  ready in $READY_BIG ms, RSS $RSS_READY_BIG KiB"
load_target sy100k "http://127.0.0.1:$SY" "/$SLUG/v1/chat/completions" "$SYPID"
rss sy100k "$(vm "$SYPID" VmHWM)"
"$PROBE" admin "127.0.0.1:$AD/v1/gateways/$GID/consumers/$OTHER" --token "$TOKEN" --n 200 >"$R/admin_idle_big.json"
# The 10-consumer store again, on its own ports, taking turns with the big one: the two
# throughputs are compared side by side, not minutes apart.
BIGPID=$SYPID
SY=$SY2 AD=$AD2 sy_start "$W/small" small3; SMALLPID=$SYPID SYPID=$BIGPID
log "scale: 10 vs $CONSUMERS consumers side by side, $PAIRS turns of $PAIR_DUR s each"
wrk_run - "http://127.0.0.1:$SY2" "/$SLUG/v1/chat/completions" 32 "$WARM"
take_turns pair "sy10 http://127.0.0.1:$SY2 /$SLUG/v1/chat/completions $SMALLPID" \
  "sy100k http://127.0.0.1:$SY /$SLUG/v1/chat/completions $BIGPID"
stop "$SMALLPID"
python3 -c "import json; json.dump({'consumers': $CONSUMERS, 'gen_s': $g1 - $g0, 'import_s': $g2 - $g1,
  'store_mib': $(du -sm "$W/big" | cut -f1), 'ready_ms_10': $READY_10, 'ready_ms_big': $READY_BIG,
  'rss_ready_10': $RSS_READY_10, 'rss_ready_big': $RSS_READY_BIG}, open('$R/scale.json', 'w'))"
echo "$RSS_JSON" >"$R/rss.json"
cat "$W"/small.log "$W"/small2.log "$W"/small_h2c.log "$W"/small3.log "$W"/big.log | grep -o '"status":[0-9]*' | sort | uniq -c |
  python3 -c 'import json, sys; print(json.dumps({l.split(":")[1].strip(): int(l.split()[0]) for l in sys.stdin}))' >"$R/statuses.json"

# --- report -----------------------------------------------------------------------------
STEAL_PCT=$(python3 -c "print(100 * ($(steal) - $STEAL0) / ($(getconf CLK_TCK) * $(nproc) * max(1, $(date +%s) - $T0)))")
python3 - "$R/info.json" "$QUICK" "$DUR" "$RUNS" "$BODY" "$LOAD_BEFORE" "$*" "$STEAL_PCT" <<'EOF'
import json, os, subprocess, sys, time
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
mem = int(open("/proc/meminfo").read().split()[1])
# The last run's report is not a change to the code that this run measures.
dirty = " (+ uncommitted changes)" if sh("git status --porcelain --untracked-files=no -- . ':!benches/RESULTS.md'") else ""
json.dump({
    "command": ("benches/load.sh " + sys.argv[7]).strip(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    "commit": sh("git rev-parse --short HEAD") + dirty,
    "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"), "cores": os.cpu_count(),
    "ram": "%.1f GiB" % (mem / 2**20), "kernel": sh("uname -r"),
    "os": sh(". /etc/os-release; echo $PRETTY_NAME"), "wrk": sh("wrk -v 2>&1 | head -1 | cut -d' ' -f2"),
    "quick": sys.argv[2] == "1", "duration": int(sys.argv[3]), "stream_runs": int(sys.argv[4]),
    "stream_events": 500, "stream_gap_ms": 1, "body_bytes": len(sys.argv[5]), "load_before": sys.argv[6],
    "steal_pct": float(sys.argv[8]),
}, open(sys.argv[1], "w"))
EOF
python3 benches/bench.py report "$R" benches/RESULTS.md
