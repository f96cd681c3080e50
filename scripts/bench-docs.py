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


def lat(v):
    u = v["unlock_lateness_ms"]
    return f"{n(u['p50'])} / {n(u['p99'])} / {n(u['max'])} ms"


def quiet_rows(r, short=False):
    d, b, p = r["deckhand"], r["baseline"], r["polling"]
    rows = []
    for q in r["config"]["quiet_queues"]:
        k = f"quiet_{q}"
        dk, pk, bk = d[k], p[k], b[k]
        ratio = round(dk["redis_cpu_percent"] / bk["redis_cpu_percent"], 3) if bk["redis_cpu_percent"] else "-"
        rows.append((f"{n(q)} quiet queues: Redis CPU / commands per second",
                     f"**{dk['redis_cpu_percent']} %** / {n(dk['redis_commands_per_s'])}",
                     f"{pk['redis_cpu_percent']} % / {n(pk['redis_commands_per_s'])}",
                     f"{bk['redis_cpu_percent']} % / {n(bk['redis_commands_per_s'])}", ratio))
        if short:
            continue
        rows.append((f"{n(q)} quiet queues: housekeeping calls per second",
                     n(dk["node_calls_per_s"]), n(pk["node_calls_per_s"]), "-", ""))
        rows.append((f"{n(q)} quiet queues: CPU / RSS of the housekeeping processes",
                     f"{sum(dk['cpu_percent_per_process']):.1f} % / {sum(dk['rss_mib_per_process']):.0f} MiB",
                     f"{sum(pk['cpu_percent_per_process']):.1f} % / {sum(pk['rss_mib_per_process']):.0f} MiB",
                     f"{sum(bk['cpu_percent_per_process']):.1f} % / {sum(bk['rss_mib_per_process']):.0f} MiB",
                     ""))
        su, ps, bs = dk["startup_window"], pk["startup_window"], bk["startup_window"]
        rows.append((f"{n(q)} quiet queues, start-up window (discovery, first sweep): Redis CPU",
                     f"{su['redis_cpu_percent']} %", f"{ps['redis_cpu_percent']} %",
                     f"{bs['redis_cpu_percent']} %", ""))
    return rows


def table(r, short=False):
    d, b, p, x = r["deckhand"], r["baseline"], r["polling"], r["ratios"]
    c = r["config"]
    limit = r["redis_limit"]["elements_per_s"]
    fo, ho = d["failover"], d["handoff"]
    mix = (f"{n(c['queues'])} queues ({c['new_queues_pct']} % created during the run), "
           f"{n(c['rate_per_s'])} msgs/s, locks {c['lock_ms']} ms, no warm-up")
    rows = [
        ("figure", "deckhand (lock events)", "deckhand, polling fallback", "baseline (1 s tick)",
         "events / baseline"),
        ("---", "---", "---", "---", "---"),
        (f"unlock lateness p50 / p99 / max, consumer view: {mix}", f"**{lat(d['lateness'])}**",
         lat(p["lateness"]), lat(b["lateness"]), x["unlock_lateness_p99"]),
        (f"one hot queue, {n(c['hot_rate_per_s'])} msgs/s: unlock lateness p50 / p99 / max",
         lat(d["hot"]), "-", lat(b["hot"]), ""),
        ("one hot queue: deckhand's housekeeping calls per second on it",
         n(d["hot"]["node_calls_per_s"]), "-", "1 (its tick)", ""),
    ]
    rows += quiet_rows(r, short)
    de, be = d["empty"], b["empty"]
    rows += [
        ("no queues at all: CPU / RSS per node",
         f"{max(de['cpu_percent_per_process'])} % / {max(de['rss_mib_per_process']):.0f} MiB", "-",
         f"{be['cpu_percent_per_process'][0]} % / {be['rss_mib_per_process'][0]:.0f} MiB", ""),
        (f"drain of {n(c['drain_locks'])} expired locks over {n(c['drain_queues'])} queues "
         f"(share of the {n(limit)}/s this Redis sustains)",
         f"{n(d['drain']['drain_per_s'])}/s ({pct(x['drain_deckhand_vs_redis_limit'])})", "-",
         f"{n(b['drain']['drain_per_s'])}/s ({pct(x['drain_baseline_vs_redis_limit'])})",
         x["drain_elements_per_s"]),
    ]
    if not short:
        rows += [
            ("unlock lateness p99 while a follower and then the leader are killed and restarted",
             f"{n(d['faults']['unlock_lateness_ms']['p99'])} ms", "-",
             f"{n(b['faults']['unlock_lateness_ms']['p99'])} ms (killed, back 4 s later)", ""),
            ("timeout lateness p50 / p99 (1 s ack deadlines)",
             f"{d['lateness']['timeout_lateness_ms']['p50']} / {n(d['lateness']['timeout_lateness_ms']['p99'])} ms",
             f"{p['lateness']['timeout_lateness_ms']['p50']} / {n(p['lateness']['timeout_lateness_ms']['p99'])} ms",
             f"{b['lateness']['timeout_lateness_ms']['p50']} / {n(b['lateness']['timeout_lateness_ms']['p99'])} ms",
             ""),
        ]
    rows += [
        (f"leader failover after `kill -9`, median / max ({fo['kills']} kills)"
         + ("; survivors' lease lapses" if "lease_lapses" in fo else ""),
         f"**{fo['median_ms']} / {fo['max_ms']} ms**"
         + (f"; {fo['lease_lapses']}" if "lease_lapses" in fo else ""), "-",
         "none: work stops until the process is replaced (15–60 s on Kubernetes)", ""),
        ("shard handoff after `kill -9` / SIGTERM of an owner, median",
         f"{n(ho['crash']['median_ms'])} / {n(ho['graceful']['median_ms'])} ms", "-", "as above", ""),
    ]
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def full_table(r):
    return table(r)


def short_table(r):
    return table(r, short=True)


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
