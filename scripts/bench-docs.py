#!/usr/bin/env python3
"""Writes the figures of bench/results.json (from scripts/bench.sh) into the
tables between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in README.md
and docs/benchmarks.md, so the docs always show the last run's numbers.

    scripts/bench.sh && scripts/bench-docs.py
"""
import json
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def n(v):
    return f"{round(v):,}"


def pct(v):
    return f"{v * 100:.1f} %"


def facts(r):
    d, b, x = r["deckhand"], r["baseline"], r["ratios"]
    dl, bl = d["lateness"]["unlock_lateness_ms"], b["lateness"]["unlock_lateness_ms"]
    dt, bt = d["lateness"]["timeout_lateness_ms"], b["lateness"]["timeout_lateness_ms"]
    di, bi = d["idle"], b["idle"]
    dcpu, bcpu = sum(di["cpu_percent_per_process"]), sum(bi["cpu_percent_per_process"])
    drss, brss = sum(di["rss_mib_per_process"]), sum(bi["rss_mib_per_process"])
    fo, ho = d["failover"], d["handoff"]
    limit = r["redis_limit"]["elements_per_s"]
    commit = r.get("commit", "?")
    return locals()


def full_table(r):
    f = facts(r)
    d, b, x = f["d"], f["b"], f["x"]
    dl, bl, dt, bt, di, bi = f["dl"], f["bl"], f["dt"], f["bt"], f["di"], f["bi"]
    c = r["config"]
    rows = [
        ("figure", "deckhand", "baseline", "deckhand / baseline"),
        ("---", "---", "---", "---"),
        (f"unlock lateness p50, consumer view ({n(c['queues'])} queues, {n(c['rate_per_s'])} msgs/s, "
         f"{c['lock_ms']} ms locks, {c['traffic_s']} s)", f"**{dl['p50']} ms**", f"{n(bl['p50'])} ms",
         x["unlock_lateness_p50"]),
        ("unlock lateness p99", f"**{dl['p99']} ms**", f"{n(bl['p99'])} ms", x["unlock_lateness_p99"]),
        ("unlock lateness max", f"{dl['max']} ms", f"{n(bl['max'])} ms",
         round(dl["max"] / bl["max"], 3) if bl["max"] else "-"),
        ("timeout lateness p50 / p99", f"{dt['p50']} / {dt['p99']} ms",
         f"{n(bt['p50'])} / {n(bt['p99'])} ms", ""),
        (f"drain of {n(c['drain_locks'])} expired locks over {n(c['drain_queues'])} queues",
         f"{n(d['drain']['drain_per_s'])}/s ({d['drain']['drain_s']:.2f} s)",
         f"{n(b['drain']['drain_per_s'])}/s ({b['drain']['drain_s']:.2f} s)", x["drain_elements_per_s"]),
        (f"the same drain as a share of what this Redis sustains ({n(f['limit'])}/s)",
         pct(x["drain_deckhand_vs_redis_limit"]), pct(x["drain_baseline_vs_redis_limit"]), ""),
        (f"idle, {n(c['idle_queues'])} queues: Redis commands/s (including those inside scripts)",
         n(di["redis_commands_per_s"]), n(bi["redis_commands_per_s"]), x["idle_redis_commands_per_s"]),
        (f"idle, {n(c['idle_queues'])} queues: Redis CPU", f"**{di['redis_cpu_percent']} %**",
         f"{bi['redis_cpu_percent']} %", x["idle_redis_cpu_percent"]),
        (f"idle, {n(c['idle_queues'])} queues: CPU of the housekeeping processes",
         f"{f['dcpu']:.1f} % ({' + '.join(str(v) for v in di['cpu_percent_per_process'])})",
         f"{f['bcpu']:.1f} %", x["idle_cpu_percent_total"]),
        (f"idle, {n(c['idle_queues'])} queues: RSS",
         f"{f['drss']:.1f} MiB ({' + '.join(str(v) for v in di['rss_mib_per_process'])})",
         f"{f['brss']:.1f} MiB", x["idle_rss_mib_total"]),
        ("lateness p99 while a follower and then the leader are killed and restarted",
         f"{n(d['faults']['unlock_lateness_ms']['p99'])} ms",
         f"{n(b['faults']['unlock_lateness_ms']['p99'])} ms (killed, back 4 s later)",
         round(d['faults']['unlock_lateness_ms']['p99'] / b['faults']['unlock_lateness_ms']['p99'], 2)),
        (f"leader failover after `kill -9` ({f['fo']['kills']} kills)",
         f"median {f['fo']['median_ms']} ms, max {f['fo']['max_ms']} ms",
         "no failover: work stops until the process is replaced (15–60 s on Kubernetes)", ""),
        (f"shard handoff after `kill -9` / SIGTERM of an owner ({f['ho']['crash']['rounds']} each), median",
         f"{n(f['ho']['crash']['median_ms'])} / {n(f['ho']['graceful']['median_ms'])} ms", "as above", ""),
    ]
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def short_table(r):
    f = facts(r)
    d, b, x = f["d"], f["b"], f["x"]
    dl, bl, di, bi = f["dl"], f["bl"], f["di"], f["bi"]
    c = r["config"]
    rows = [
        ("figure", "deckhand", "baseline", "ratio"),
        ("---", "---", "---", "---"),
        (f"unlock lateness as consumers see it, p50 / p99 ({n(c['queues'])} queues, "
         f"{n(c['rate_per_s'])} msgs/s, {c['lock_ms']} ms locks)",
         f"**{dl['p50']} / {dl['p99']} ms**", f"{n(bl['p50'])} / {n(bl['p99'])} ms",
         f"{x['unlock_lateness_p50']} / {x['unlock_lateness_p99']}"),
        ("p99 while a follower, then the leader, are killed and restarted",
         f"{n(d['faults']['unlock_lateness_ms']['p99'])} ms",
         f"{n(b['faults']['unlock_lateness_ms']['p99'])} ms (process back after 4 s)", ""),
        (f"leader failover after `kill -9`, median / max ({f['fo']['kills']} kills)",
         f"**{f['fo']['median_ms']} / {f['fo']['max_ms']} ms**", "none: waits for a replacement", ""),
        ("shard handoff after `kill -9` / SIGTERM of an owner, median",
         f"{n(f['ho']['crash']['median_ms'])} / {n(f['ho']['graceful']['median_ms'])} ms", "as above", ""),
        (f"drain of {n(c['drain_locks'])} expired locks over {n(c['drain_queues'])} queues "
         "(share of the Redis limit)",
         f"{n(d['drain']['drain_per_s'])}/s ({pct(x['drain_deckhand_vs_redis_limit'])})",
         f"{n(b['drain']['drain_per_s'])}/s ({pct(x['drain_baseline_vs_redis_limit'])})",
         x["drain_elements_per_s"]),
        (f"idle, {n(c['idle_queues'])} queues: Redis CPU / Redis commands per second",
         f"{di['redis_cpu_percent']} % / {n(di['redis_commands_per_s'])}",
         f"{bi['redis_cpu_percent']} % / {n(bi['redis_commands_per_s'])}",
         f"{x['idle_redis_cpu_percent']} / {x['idle_redis_commands_per_s']}"),
        (f"idle, {n(c['idle_queues'])} queues: CPU / RSS of the housekeeping processes",
         f"{f['dcpu']:.1f} % / {f['drss']:.0f} MiB (3 nodes)", f"{f['bcpu']:.1f} % / {f['brss']:.1f} MiB",
         f"{x['idle_cpu_percent_total']} / {x['idle_rss_mib_total']}"),
    ]
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def run_line(r):
    return (f"Run of commit `{r.get('commit', '?')}` on {r.get('date', '?')}, {r['config']['cpus']} cores, "
            f"{r['elapsed_s']:.0f} s for the whole suite (`scripts/bench.sh`).")


def fill(path, name, text):
    s = open(path).read()
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(s):
        raise SystemExit(f"{path}: no <!-- bench:{name} --> block")
    s = pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), s)
    open(path, "w").write(s)


def main():
    r = json.load(open(os.path.join(ROOT, "bench/results.json")))
    for path in ("README.md", "docs/benchmarks.md"):
        full = os.path.join(ROOT, path)
        fill(full, "run", run_line(r))
    fill(os.path.join(ROOT, "README.md"), "table", short_table(r))
    fill(os.path.join(ROOT, "docs/benchmarks.md"), "table", full_table(r))
    print("updated README.md and docs/benchmarks.md from bench/results.json")


if __name__ == "__main__":
    main()
