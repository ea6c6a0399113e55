#!/usr/bin/env python3
"""Helpers of benches/load.sh (stdlib only).

  seed ADMIN_URL TOKEN UPSTREAM_PORT N OUT       gateway, 2 openai + 1 anthropic registries, a
                                                 rate-limit policy, N keyed consumers -> OUT (json)
  bigstore EXPORT N OUT                          EXPORT (a `switchyard export`) grown to N
                                                 consumers, each with its own API key
  report RESULTS_DIR OUT_MD                      RESULTS.md from the measurements
"""
import hashlib
import json
import os
import random
import statistics
import string
import sys
import urllib.request

MODELS = ["gpt-bench", "sse-500-1", "sse-60-500", "sse-5-1"]


def api(base, token, method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": "Bearer " + token,
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def bench_key(i):
    return "sy-bench-key-%06d-0123456789abcdef" % i


def seed(base, token, port, n, out):
    g = api(base, token, "POST", "/v1/gateways", {"name": "bench"})["id"]
    col = "/v1/gateways/%s/" % g
    reg = lambda name, provider, url: api(base, token, "POST", col + "registries", {
        "name": name, "provider": provider, "base_url": url,
        "auth": {"api_key": "sk-bench-upstream-0000"}})["id"]
    r1 = reg("openai-a", "openai", "http://127.0.0.1:%s/v1" % port)
    r2 = reg("openai-b", "openai", "http://127.0.0.1:%s/v1" % port)
    r3 = reg("anthropic", "anthropic", "http://127.0.0.1:%s" % port)
    pol = api(base, token, "POST", col + "policies", {
        "name": "rpm", "type": "rate_limit",
        "config": {"requests_per_minute": 1_000_000_000, "burst": 1_000_000_000}})["id"]
    mp = {"allowed": MODELS, "default": "gpt-bench"}
    consumers = []
    for i in range(n + 1):  # consumer n is the translated one
        auth = api(base, token, "POST", col + "auths",
                   {"name": "key%d" % i, "type": "api_key", "key": bench_key(i)})["id"]
        regs = ([{"id": r3, "weight": 1, "model_policies": {"allowed": [], "default": "claude-bench"}}]
                if i == n else
                [{"id": r1, "weight": 50, "model_policies": mp},
                 {"id": r2, "weight": 50, "model_policies": mp}])
        c = api(base, token, "POST", col + "consumers", {
            "name": "c%d" % i, "registries": regs, "auth_ids": [auth], "policy_ids": [pol]})
        consumers.append({"id": c["id"], "slug": c["slug"], "key": bench_key(i)})
    json.dump({"gateway": g, "consumers": consumers[:n], "translated": consumers[n]},
              open(out, "w"), indent=1)


def bigstore(export, n, out):
    doc = json.load(open(export))
    auths = {a["id"]: a for a in doc["auths"]}
    base = next(c for c in doc["consumers"] if c["name"] == "c0")
    base_auth = auths[base["auth_ids"][0]]
    slugs = {c["slug"] for c in doc["consumers"]}
    rnd = random.Random(8)
    alphabet = string.ascii_lowercase + string.digits
    for i in range(len(doc["consumers"]), n):
        key = bench_key(1_000_000 + i)
        aid, cid = "bench-auth-%06d" % i, "bench-consumer-%06d" % i
        a = dict(base_auth, id=aid, name="bulk-key%d" % i,
                 key_hash=hashlib.sha256(key.encode()).hexdigest())
        a.pop("key_prefix", None)
        slug = "".join(rnd.choice(alphabet) for _ in range(12))
        while slug in slugs:
            slug = "".join(rnd.choice(alphabet) for _ in range(12))
        slugs.add(slug)
        doc["auths"].append(a)
        doc["consumers"].append(dict(base, id=cid, name="bulk-c%d" % i, slug=slug, auth_ids=[aid]))
    json.dump(doc, open(out, "w"))


# ---------------------------------------------------------------------------------------------
def load(d, name):
    p = os.path.join(d, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None


def cpu_per_request(d, name, run):
    """µs of CPU per request of run, from cpu_NAME (the process's ticks over the run), or None."""
    cpu = load(d, "cpu_" + name)
    return cpu and run and cpu["ticks"] / cpu["hz"] * 1e6 / max(1, run["requests"])


def side_by_side(d, prefix, a, b):
    """Turns taken in alternation, from PREFIX_A_i and PREFIX_B_i (and their cpu_ files):
    [{"a": req/s, "b": req/s, "secs": s, "cpu_a": µs/request or None, "cpu_b": ...}]."""
    rate = lambda run: run["requests"] / (run["duration_us"] / 1e6)
    turns = []
    while True:
        names = ["%s_%s_%d" % (prefix, t, len(turns) + 1) for t in (a, b)]
        ra, rb = (load(d, n) for n in names)
        if not (ra and rb):
            return turns
        turns.append({"a": rate(ra), "b": rate(rb), "secs": ra["duration_us"] / 1e6,
                      "cpu_a": cpu_per_request(d, names[0], ra), "cpu_b": cpu_per_request(d, names[1], rb)})


def median_ratio(turns, key="%s"):
    """The median over turns of b's number over a's (req/s, or with key "cpu_%s" CPU per request)."""
    ratios = [t[key % "b"] / t[key % "a"] for t in turns if t[key % "a"] and t[key % "b"]]
    return statistics.median(ratios) if ratios else None


def describe_turns(turns, a, b):
    """One sentence on turns of a and b: each one's req/s and CPU per request, and b's ratios."""
    rates = lambda k: "%s–%s req/s (median %s)" % (
        f(min(t[k] for t in turns)), f(max(t[k] for t in turns)), f(statistics.median(t[k] for t in turns)))
    ratios = sorted(t["b"] / t["a"] * 100 for t in turns)
    cpu = median_ratio(turns, "cpu_%s")
    cpus = lambda k: f(statistics.median(t[k] for t in turns), 1, " µs") if cpu else "n/a"
    return ("%s %s, %s %s; req/s per turn, %s over %s: median %s (%s to %s). CPU per request, "
            "medians: %s %s, %s %s (%s over %s: %s)." % (
                a, rates("a"), b, rates("b"), b, a, f(median_ratio(turns) * 100, 1, " %"), f(ratios[0], 1, " %"),
                f(ratios[-1], 1, " %"), a, cpus("cpu_a"), b, cpus("cpu_b"), b, a,
                "n/a" if cpu is None else f(cpu * 100, 1, " %")))


def verdict(ok):
    if isinstance(ok, str):
        return ok
    return "n/a" if ok is None else ("PASS" if ok else "**MISS**")


def f(x, nd=0, unit=""):
    if x is None:
        return "n/a"
    return ("{:,.%df}" % nd).format(x) + unit


def report(d, out_md):
    w = {}  # load runs
    for t in ("direct", "floor", "sy10", "sy100k"):
        for c in (1, 32):
            w[t, c] = load(d, "load_%s_c%d" % (t, c))
    core = {t: load(d, "load_%s_c1core" % t) for t in ("direct", "floor", "sy10")}
    info = load(d, "info")
    rss = load(d, "rss") or {}
    rps = lambda t, c: w[t, c] and w[t, c]["requests"] / (w[t, c]["duration_us"] / 1e6)
    lat = lambda t, c, p: w[t, c] and w[t, c]["p%d_us" % p] / 1e3
    # ms a run's percentile p lies above the direct upstream's, measured the same way
    gap = lambda run, direct, p: (run["p%d_us" % p] - direct["p%d_us" % p]) / 1e3 if run and direct else None
    added = lambda t, p: gap(w[t, 1], w["direct", 1], p)
    core_added = lambda t, p: gap(core[t], core["direct"], p)
    names = {"direct": "direct upstream", "floor": "floor (Pingora passthrough)",
             "sy10": "switchyard, 10 consumers", "sy100k": "switchyard, 100k consumers"}
    L = []
    L.append("# Load benchmark results (issue #8)\n")
    L.append("Regenerated by `%s` on %s, commit `%s`.\n" % (info["command"], info["date"], info["commit"]))
    L.append("**Machine**: %s, %s cores, %s RAM, kernel %s, %s.\n" % (
        info["cpu"], info["cores"], info["ram"], info["kernel"], info["os"]))
    L.append("The upstream, the proxy under test and the load generator (wrk %s) all run on loopback on "
             "the same cores, pinned to nothing (but for the one-core rounds); each proxy runs 2 worker "
             "threads. Durations: %s s per load run%s. The 1-minute load average before the run was %s (anything above ~0.1 means other work "
             "shared the cores and skews the numbers). The hypervisor gave %s %% of the cores' time "
             "to other guests over the run (steal time; it skews the numbers too).\n" % (
             info["wrk"], info["duration"], " (**--quick**: indicative only)" if info["quick"] else "",
             info["load_before"], f(info.get("steal_pct"), 1)))
    L.append("## Requests (non-streaming chat completion, %d-byte request)\n" % info["body_bytes"])
    rounds = (w["sy10", 1] or {}).get("rounds")
    if rounds:
        L.append("At one connection, the direct upstream, the floor and switchyard (10 consumers) take "
                 "turns: %d runs of %s s each, and each p50 and p99 is the median over its runs. "
                 "The 100k row is one run.\n" % (rounds, f(info["duration"] / rounds)))
    L.append("| target | req/s @1 | p50 @1 | p99 @1 | added p50 @1 | added p99 @1 | max req/s (@32) | p50 @32 | p99 @32 | max req/s vs floor | CPU per request @32 | peak RSS | non-2xx/errors |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in ("direct", "floor", "sy10", "sy100k"):
        if not w[t, 1]:
            continue
        ratio = rps(t, 32) / rps("floor", 32) if w[t, 32] and w["floor", 32] and t != "direct" else None
        bad = sum((w[t, c] or {}).get("errors", 0) + (w[t, c] or {}).get("non2xx", 0) for c in (1, 32))
        cpu_us = cpu_per_request(d, t, w[t, 32])
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
            names[t], f(rps(t, 1)), f(lat(t, 1, 50), 3, " ms"), f(lat(t, 1, 99), 3, " ms"),
            "—" if t == "direct" else f(added(t, 50), 3, " ms"), "—" if t == "direct" else f(added(t, 99), 3, " ms"),
            f(rps(t, 32)), f(lat(t, 32, 50), 3, " ms"), f(lat(t, 32, 99), 3, " ms"),
            "—" if ratio is None else f(ratio * 100, 1, " %"), f(cpu_us, 0, " µs"),
            f(rss.get(t, 0) / 1024, 1, " MiB") if rss.get(t) else "n/a", bad))
    turns = side_by_side(d, "c32", "floor", "sy10")
    if turns:
        L.append("\nAt 32 connections the floor and switchyard (10 consumers) also take %d turns of %s s, "
                 "in alternating order (AB BA AB ...), so the host's drift lands on both: %s The target "
                 "uses the median ratio.\n" % (len(turns), f(turns[0]["secs"], 0),
                                              describe_turns(turns, "the floor", "switchyard")))
    if all(core.values()):
        L.append("\nAt one connection again, with the upstream, both proxies and wrk pinned to one core "
                 "(%d runs of %s s each, medians): on this VM a wake-up that crosses to the other, idle "
                 "vCPU costs tens of µs, so across two cores the latency at one connection depends on "
                 "which hops cross. On one core none do, and what a proxy adds is its own time on the "
                 "request's path. Informational, next to the runs above that the target uses.\n" % (
                     core["sy10"]["rounds"], f(info["duration"] / core["sy10"]["rounds"])))
        L.append("| on one core | req/s @1 | p50 @1 | p99 @1 | added p50 @1 | added p99 @1 |")
        L.append("|---|---|---|---|---|---|")
        for t in ("direct", "floor", "sy10"):
            c = core[t]
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                names[t], f(c["requests"] / (c["duration_us"] / 1e6)), f(c["p50_us"], 0, " µs"),
                f(c["p99_us"], 0, " µs"), "—" if t == "direct" else f(core_added(t, 50) * 1e3, 0, " µs"),
                "—" if t == "direct" else f(core_added(t, 99) * 1e3, 0, " µs")))
    alone = {n: {t: load(d, "load_%s_alone_%s" % (t, n)) for t in ("direct", "floor", "sy10")}
             for n in ("client", "upstream", "proxy")}
    if all(all(a.values()) for a in alone.values()):
        L.append("\nOne connection across two cores again, each pairing set by hand and the same for "
                 "both proxies (%d runs of %s s each, medians): which of the three runs alone on a core. "
                 "Unpinned, the kernel places each where it finds an idle core, and not always alike for "
                 "the two proxies. Informational.\n" % (alone["client"]["sy10"]["rounds"],
                                                           f(alone["client"]["sy10"]["duration_us"] / 1e6 / alone["client"]["sy10"]["rounds"], 0)))
        L.append("| alone on a core | direct p50 | floor added p50 | switchyard added p50 | ratio | "
                 "floor added p99 | switchyard added p99 | ratio |")
        L.append("|---|---|---|---|---|---|---|---|")
        for n, a in alone.items():
            cells = [n, f(a["direct"]["p50_us"], 0, " µs")]
            for p in (50, 99):
                fa, sa = gap(a["floor"], a["direct"], p), gap(a["sy10"], a["direct"], p)
                cells += [f(fa * 1e3, 0, " µs"), f(sa * 1e3, 0, " µs"),
                          f(sa / fa, 2, "×") if fa > 0 else "n/a"]
            L.append("| " + " | ".join(cells) + " |")
    L.append("\nCPU per request: the CPU time of the process under test (for the direct row: the upstream) "
             "over the 32-connection run, divided by the requests served (1/%s s resolution).\n" % ((load(d, "cpu_direct") or {}).get("hz", "?")))
    errs = sum((w[k] or {}).get("errors", 0) + (w[k] or {}).get("non2xx", 0) for k in w)
    st = load(d, "statuses") or {}
    L.append("\nErrors or non-2xx answers seen by wrk in these runs: %d. Statuses in switchyard's access log "
             "over the whole benchmark: %s.\n" % (errs, ", ".join("%s × %s" % (v, k) for k, v in sorted(st.items()))))

    s = load(d, "stream_openai") or {}
    a = load(d, "stream_anthropic") or {}
    L.append("## Streams (%s events, %s ms apart; %s runs per target, all six targets interleaved, "
             "each run in a rotated order)\n" % (info["stream_events"], info["stream_gap_ms"], info["stream_runs"]))
    L.append("Per-event added latency: each event carries the upstream's send time; its transit time "
             "through a proxy minus the same event's transit time straight from the upstream.\n")
    L.append("| path | TTFB p50 | event transit p50 | added per event p50 | added per event p99 | events/run |")
    L.append("|---|---|---|---|---|---|")
    rows = [("OpenAI SSE, direct", s.get("direct")), ("OpenAI SSE via floor", s.get("floor")),
            ("OpenAI SSE via switchyard (passthrough)", s.get("switchyard")),
            ("Anthropic SSE, direct", a.get("direct")), ("Anthropic SSE via floor (no translation)", a.get("floor")),
            ("Anthropic SSE via switchyard → OpenAI chunks (translated)", a.get("switchyard"))]
    for label, r in rows:
        if r:
            L.append("| %s | %s | %s | %s | %s | %d/%d |" % (
                label, f(r["ttfb_p50_us"], 0, " µs"), f(r["transit_p50_us"], 0, " µs"),
                f(r["added_p50_us"], 1, " µs"), f(r["added_p99_us"], 1, " µs"),
                r["events_per_run_min"], r["events_expected"]))

    h, hf, hu = load(d, "hold_switchyard"), load(d, "hold_floor"), load(d, "hold_floor_unbuffered")
    h2, hf2 = load(d, "hold_switchyard_h2c"), load(d, "hold_floor_h2c")
    L.append("\n## Open streams\n")
    L.append("Each proxy is started fresh; the probe opens the streams one after the other and holds "
             "them open (an event every 500 ms). Switchyard reads client connections without the "
             "64 KiB read buffer Pingora puts under each by default; the floor's rows without it "
             "have that buffer off too (`FLOOR_L4_READ_BUFFER=0`). HTTP/1.1 takes one client "
             "connection per stream; the h2c rows carry 100 streams on each HTTP/2 connection "
             "(prior knowledge, no TLS), as a load balancer in front of the gateway can "
             "(switchyard's `proxy.h2c`, the floor's `FLOOR_H2C=1`). Each stream has its own "
             "upstream connection either way. The floor uses the system allocator, switchyard "
             "jemalloc.\n")
    L.append("| proxy | client protocol | streams open | failed | RSS before | RSS with all open | per stream |")
    L.append("|---|---|---|---|---|---|---|")
    for label, r in (("floor", hf), ("floor, no L4 read buffer", hu), ("switchyard", h),
                     ("floor, no L4 read buffer", hf2), ("switchyard", h2)):
        if r:
            proto = "h2c, %d connections" % r["h2c_connections"] if r.get("h2c_connections") else "HTTP/1.1"
            L.append("| %s | %s | %d | %d | %s | %s | %s |" % (label, proto, r["open"], r["failed"],
                     f(r["rss_before_kib"] / 1024, 1, " MiB"), f(r["rss_during_kib"] / 1024, 1, " MiB"),
                     f(r["kib_per_stream"], 1, " KiB")))

    sc = load(d, "scale") or {}
    pairs = side_by_side(d, "pair", "sy10", "sy100k")
    L.append("\n## Scale (%s consumers, each with its own API key)\n" % f(sc.get("consumers")))
    L.append("The big store is made by growing a `switchyard export` of the 10-consumer store to "
             "%s consumers and auths (ids, slugs, SHA-256 `key_hash`es) with `benches/bench.py bigstore`, "
             "then loading it with `switchyard import` into an empty data dir.\n" % f(sc.get("consumers")))
    L.append("| | 10 consumers | %s consumers |" % f(sc.get("consumers")))
    L.append("|---|---|---|")
    L.append("| start-up to `/readyz` 200 | %s | %s |" % (f(sc.get("ready_ms_10"), 0, " ms"), f(sc.get("ready_ms_big"), 0, " ms")))
    L.append("| RSS when ready | %s | %s |" % (f((sc.get("rss_ready_10") or 0) / 1024, 1, " MiB"), f((sc.get("rss_ready_big") or 0) / 1024, 1, " MiB")))
    L.append("| peak RSS after the load runs | %s | %s |" % (f((rss.get("sy10") or 0) / 1024, 1, " MiB"), f((rss.get("sy100k") or 0) / 1024, 1, " MiB")))
    L.append("| max req/s (@32) | %s | %s |" % (f(rps("sy10", 32)), f(rps("sy100k", 32))))
    if pairs:
        L.append("| max req/s (@32), side by side: %d turns of %s s each (medians) | %s | %s (%s of 10 consumers') |" % (
            len(pairs), f(pairs[0]["secs"]), f(statistics.median(t["a"] for t in pairs)),
            f(statistics.median(t["b"] for t in pairs)), f(median_ratio(pairs) * 100, 1, " %")))
    i10, ibig = load(d, "admin_idle_10"), load(d, "admin_idle_big")
    if i10 and ibig:
        L.append("| admin write p50 / p99 (200 PATCHes, no load) | %s / %s | %s / %s |" % (
            f(i10["p50_ms"], 2, " ms"), f(i10["p99_ms"], 2, " ms"), f(ibig["p50_ms"], 2, " ms"), f(ibig["p99_ms"], 2, " ms")))
    if pairs:
        L.append("\nSide by side, in alternating order: %s" % describe_turns(pairs, "10 consumers", "100,000 consumers"))
    L.append("\nGenerating the document took %s s, `switchyard import` %s s (store on disk: %s MiB).\n" % (
        f(sc.get("gen_s"), 1), f(sc.get("import_s"), 1), f(sc.get("store_mib"), 0)))

    admin = load(d, "admin") or {}
    bursts, control = admin.get("bursts") or [], admin.get("control") or []
    change = lambda b: b["rps_during"] / b["rps_without"] - 1
    control_changes = sorted(change(c) * 100 for c in control)
    L.append("## Admin writes under load\n")
    L.append("%d bursts of %s sequential `PATCH /v1/gateways/{gid}/consumers/{id}` from one client, while wrk "
             "drives switchyard with 32 connections, each burst between two quiet windows of the same run, and "
             "each followed by a control: a pause of the burst's length, with no writes, measured the same way. "
             "Each write is answered once its journal sync is on disk; syncs start at least "
             "`admin.commit_interval_ms` (default 8 ms) apart and cover every write made meanwhile. The "
             "proxy's req/s comes from `switchyard_requests_total` over the burst and over the windows on "
             "either side of it. The targets use the median change and the worst p99.\n"
             % (len(bursts), f(bursts[0]["writes"]) if bursts else "n/a"))
    if bursts:
        L.append("| burst | write p50 | write p99 | write max | errors | length | writes/s | proxy req/s without | during | change |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for i, b in enumerate(bursts):
            L.append("| %d | %s | %s | %s | %d | %s | %s | %s | %s | %s |" % (
                i + 1, f(b["p50_ms"], 2, " ms"), f(b["p99_ms"], 2, " ms"), f(b["max_ms"], 2, " ms"), b["errors"],
                f(b["seconds"], 2, " s"), f(b["writes"] / b["seconds"]),
                f(b["rps_without"]), f(b["rps_during"]), f(change(b) * 100, 1, " %")))
        for i, c in enumerate(control):
            L.append("| control %d (no writes) | | | | | %s | | %s | %s | %s |" % (
                i + 1, f(c["seconds"], 2, " s"), f(c["rps_without"]), f(c["rps_during"]),
                f(change(c) * 100, 1, " %")))
        L.append("")
        if control:
            L.append("The control rows show how much the proxy's rate moves between windows on this "
                     "machine by itself: median %s, %s to %s.\n" % (
                         f(statistics.median(control_changes), 1, " %"), f(control_changes[0], 1, " %"),
                         f(control_changes[-1], 1, " %")))

    # Targets.
    T = []
    def target(name, goal, measured, ok):
        T.append("| %s | %s | %s | %s |" % (name, goal, measured, verdict(ok)))
    if turns:
        r = median_ratio(turns)
        target("switchyard max req/s vs floor (side by side, median of %d turns)" % len(turns), "≥ 85 %",
               f(r * 100, 1, " %"), r >= 0.85)
    elif w["sy10", 32] and w["floor", 32]:
        r = rps("sy10", 32) / rps("floor", 32)
        target("switchyard max req/s vs floor", "≥ 85 %", f(r * 100, 1, " %"), r >= 0.85)
    for p in (50, 99):
        sa, fa = added("sy10", p), added("floor", p)
        if sa is not None and fa is not None and fa > 0:
            target("added p%d latency @1 conn vs floor's" % p, "≤ 1.3×",
                   "%s vs %s (%s×)" % (f(sa * 1e3, 0, " µs"), f(fa * 1e3, 0, " µs"), f(sa / fa, 2)),
                   sa <= 1.3 * fa)
        elif sa is not None and fa is not None:
            # The direct upstream's own tail is above the floor's: what a proxy adds is lost in
            # the host's jitter, and a ratio to a negative number means nothing.
            target("added p%d latency @1 conn vs floor's" % p, "≤ 1.3×",
                   "not measurable: the direct upstream's own p%d (%s) is above the floor's (%s) "
                   "and switchyard's (%s)" % (p, f(lat("direct", 1, p) * 1e3, 0, " µs"),
                                              f(lat("floor", 1, p) * 1e3, 0, " µs"),
                                              f(lat("sy10", 1, p) * 1e3, 0, " µs")),
                   None)
    for p in (50, 99):
        sa, fa = core_added("sy10", p), core_added("floor", p)
        if sa is not None and fa is not None and fa > 0:
            target("added p%d latency @1 conn vs floor's, all on one core (informational)" % p,
                   "(≤ 1.3×)", "%s vs %s (%s×)" % (f(sa * 1e3, 0, " µs"), f(fa * 1e3, 0, " µs"), f(sa / fa, 2)),
                   "info")
    if s.get("switchyard") and a.get("switchyard"):
        tp, pp = a["switchyard"]["added_p50_us"], s["switchyard"]["added_p50_us"]
        target("translated per-event added latency (p50) vs passthrough", "≤ 1.2×",
               "%s vs %s" % (f(tp, 1, " µs"), f(pp, 1, " µs")), tp <= 1.2 * pp)
    held = []
    if h:
        held.append(("over HTTP/1.1 (switchyard, %d streams, a connection each)" % h["streams"], h))
    if h2:
        held.append(("over h2c (switchyard, %d streams on %d connections)" % (h2["streams"], h2["h2c_connections"]), h2))
    for how, r in held:
        target("RSS per open stream " + how, "≤ 40 KiB",
               f(r["kib_per_stream"], 1, " KiB") + ("" if r["open"] == r["streams"] else " (only %d open)" % r["open"]),
               r["kib_per_stream"] <= 40 and r["open"] == r["streams"])
    if sc.get("consumers"):
        big = max(rss.get("sy100k") or 0, sc.get("rss_ready_big") or 0) / 1024
        target("RSS with %s consumers (peak)" % f(sc["consumers"]), "≤ 100 MiB", f(big, 1, " MiB"), big <= 100)
        if sc.get("ready_ms_big") is not None:
            target("start-up with %s consumers" % f(sc["consumers"]), "≤ 3 s", f(sc["ready_ms_big"] / 1e3, 2, " s"),
                   sc["ready_ms_big"] <= 3000)
        if pairs:
            r = median_ratio(pairs)
            target("max req/s, %s vs 10 consumers (side by side, median of %d turns)" % (f(sc["consumers"]), len(pairs)),
                   "no loss (≥ 95 %, run-to-run noise)", f(r * 100, 1, " %"), r >= 0.95)
        elif w["sy100k", 32] and w["sy10", 32]:
            r = rps("sy100k", 32) / rps("sy10", 32)
            target("max req/s, %s vs 10 consumers" % f(sc["consumers"]), "no loss (≥ 95 %, run-to-run noise)",
                   f(r * 100, 1, " %"), r >= 0.95)
    if bursts:
        p99 = max(b["p99_ms"] for b in bursts)
        errors = sum(b["errors"] for b in bursts)
        target("admin write p99 under load (worst burst)", "≤ 20 ms", f(p99, 2, " ms"), p99 <= 20 and errors == 0)
        drop = -sorted(change(b) for b in bursts)[len(bursts) // 2]
        noise = ""
        if control:
            noise = " (control windows without writes: %s to %s %%)" % (
                f(control_changes[0], 1), f(control_changes[-1], 1))
        target("proxy req/s drop during an admin burst (median of %d)" % len(bursts), "≤ 5 %",
               f(drop * 100, 1, " %") + noise, drop <= 0.05)
    crit = load(d, "criterion") or {}
    deltas = {k: v for k, v in crit.items() if k.startswith("translate text delta")}
    if deltas:
        name, worst = max(deltas.items(), key=lambda kv: kv[1]["median_ns"])
        target("stream translation per text delta (criterion, slowest of %d)" % len(deltas), "≤ 2 µs",
               "%s (%s)" % (f(worst["median_ns"] / 1e3, 2, " µs"), name[len("translate text delta, "):]),
               worst["median_ns"] <= 2000)
    if crit:
        L.append("## Hot functions (criterion, `benches/hot_path.rs`)\n")
        L.append("Run before the processes start, on the same machine. Median and mean time per call. "
                 "`tests/stream_alloc.rs` checks that a translated text delta makes the same number of "
                 "allocations at 6 B, 600 B and 6,000 B of text.\n")
        L.append("| function | median | mean |")
        L.append("|---|---|---|")
        for k, v in crit.items():
            L.append("| %s | %s | %s |" % (k, f(v["median_ns"] / 1e3, 3, " µs"), f(v["mean_ns"] / 1e3, 3, " µs")))
        L.append("")
    head = ["## Targets\n", "| target | goal | measured | |", "|---|---|---|---|"]
    text = "\n".join(L[:4] + head + T + [""] + L[4:]) + "\n"
    open(out_md, "w").write(text)
    print(text)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "seed":
        seed(args[0], args[1], args[2], int(args[3]), args[4])
    elif cmd == "bigstore":
        bigstore(args[0], int(args[1]), args[2])
    elif cmd == "report":
        report(args[0], args[1])
    else:
        sys.exit(__doc__)
