#!/usr/bin/env bash
# Instructions per proxied request, switchyard against the Pingora floor, under callgrind:
#   benches/callgrind.sh [--no-build] [SECONDS]
# The load benchmark's ratios move with the host (a VM's costs drift minute to minute); an
# instruction count does not. Each proxy runs under valgrind's callgrind at one connection
# (wrk, the request of benches/load.sh, the same fast upstream); the counters are zeroed after
# a warm-up and dumped after SECONDS (default 10), and the count is divided by the requests
# answered. User-space instructions only, all of the proxy's threads: the kernel's share, cache
# misses and wake-ups are not in it. valgrind hides the CPU's SHA extensions, so switchyard's
# API-key hash runs sha2's portable code here (~3,500 instructions a request, a few hundred
# natively). Prints a table and each proxy's top functions; writes nothing in the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=1 SECS=10
for a in "$@"; do
  case $a in
    --no-build) BUILD=0 ;;
    [0-9]*) SECS=$a ;;
    *) echo "usage: benches/callgrind.sh [--no-build] [SECONDS]" >&2; exit 2 ;;
  esac
done
BODY='{"model":"gpt-bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}'
TOKEN=bench-admin-token-0123456789
KEY=sy-bench-key-000000-0123456789abcdef  # bench.py's key for consumer 0
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
if ((BUILD)); then
  flock /tmp/switchyard-cargo.lock cargo build --release --bin switchyard \
    --example fast_upstream --example floor_proxy
fi
W=$(mktemp -d /tmp/switchyard-callgrind.XXXXXX) PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port)
target/release/examples/fast_upstream "127.0.0.1:$UP" >"$W/up.log" 2>&1 & PIDS+=($!); disown

# under_callgrind NAME CMD...: starts CMD under callgrind; its pid in $VG.
under_callgrind() {
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$W/$name.out" "$@" >"$W/$name.log" 2>&1 &
  VG=$!; PIDS+=("$VG"); disown
}
# count NAME URL PATH: warms up, zeroes the counters, drives SECS s, dumps; stops the proxy and
# prints "NAME requests dumpfile".
count() {
  local name=$1 url=$2 path=$3 n out=""
  for d in 3 "$SECS"; do
    ((d == 3)) || callgrind_control -z "$VG" >/dev/null 2>&1
    BENCH_PATH=$path BENCH_KEY=$KEY BENCH_BODY=$BODY wrk -t1 -c1 -d"$d"s --timeout 5s \
      -s benches/post.lua "$url" >"$W/$name.wrk"
  done
  callgrind_control -d "$VG" >/dev/null 2>&1
  n=$(sed -n 's/^WRKJSON //p' "$W/$name.wrk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  for _ in $(seq 50); do  # the dump is written asynchronously
    out=$(ls -S "$W/$name.out".* 2>/dev/null | head -1) && [[ -s $out ]] && break; sleep 0.2
  done
  kill -9 "$VG" 2>/dev/null || true
  echo "$name $n $out"
}

FL=$(port)
under_callgrind floor target/release/examples/floor_proxy "127.0.0.1:$FL" "127.0.0.1:$UP" 2
until curl -s -o /dev/null "http://127.0.0.1:$FL"; do sleep 0.2; done
FLOOR=$(count floor "http://127.0.0.1:$FL" /v1/chat/completions)

SY=$(port) AD=$(port)
cat >"$W/sy.yaml" <<Y
data_dir: $W/data
threads: 2
proxy: {listen: ["127.0.0.1:$SY"]}
admin: {listen: "127.0.0.1:$AD", token: "$TOKEN"}
log: {format: json, level: info}
shutdown: {drain_delay_ms: 0, grace_period_s: 1, shutdown_timeout_s: 1}
Y
under_callgrind switchyard target/release/switchyard run --config "$W/sy.yaml"
# `/readyz` turns 200 once the store is loaded. Then the same pipeline as benches/load.sh: API
# key, model policy, 2 weighted registries, a rate limit, metrics, access log at info.
until curl -sf "http://127.0.0.1:$SY/readyz" >/dev/null; do sleep 0.2; done
python3 benches/bench.py seed "http://127.0.0.1:$AD" "$TOKEN" "$UP" 10 "$W/seed.json"
SLUG=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['consumers'][0]['slug'])" "$W/seed.json")
SYR=$(count switchyard "http://127.0.0.1:$SY" "/$SLUG/v1/chat/completions")

python3 - "$FLOOR" "$SYR" <<'PY'
import subprocess, sys
rows = []
for arg in sys.argv[1:]:
    name, n, out = arg.split(" ")
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", out],
                          capture_output=True, text=True).stdout
    total = next(int(l.split()[0].replace(",", "")) for l in text.splitlines() if "PROGRAM TOTALS" in l)
    rows.append((name, int(n), total, text))
print("| proxy | requests | instructions | per request |\n|---|---|---|---|")
for name, n, total, _ in rows:
    print(f"| {name} | {n:,} | {total:,} | {total // n:,} |")
floor = rows[0][2] / rows[0][1]
print(f"\nswitchyard / floor: {rows[1][2] / rows[1][1] / floor:.3f}")
for name, n, total, text in rows:
    print(f"\n{name}: top functions (self), instructions per request")
    body = text.split("file:function", 1)[1].splitlines()[2:]
    shown = 0
    for line in body:
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].replace(",", "").isdigit():
            continue
        fn = parts[2].split(":", 1)[-1].split(" [")[0]
        if fn in ("clone", "start_thread") or "thread_start" in fn or "call_once" in fn \
                or "__rust_begin_short_backtrace" in fn:
            continue
        print(f"  {int(parts[0].replace(',', '')) // n:7,}  {fn[:110]}")
        shown += 1
        if shown == 12:
            break
PY
