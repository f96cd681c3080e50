#!/usr/bin/env python3
"""The benchmark suite behind scripts/bench.sh (see there for usage).

Every figure is measured twice in the same run, on the same Redis: once for
deckhand (a local 3-node cluster of release binaries) and once for the
baseline, Deckard's single-housekeeper policy (`deckhand load
--baseline-housekeeper`: one process, 1 s tick, 1000 per queue and set per
run, most recent first). Results go to bench/results.json and two SVG plots;
a table is printed.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import svgplot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("DECKHAND_BIN", os.path.join(ROOT, "target/release/deckhand"))
QUIET_QUEUES = [int(v) for v in os.environ.get("QUIET_QUEUES", "10000,250000").split(",")]
LATENESS_QUEUES = int(os.environ.get("QUEUES", "1000"))
RATE = int(os.environ.get("RATE", "400"))
HOT_RATE = int(os.environ.get("HOT_RATE", "3000"))
# Deckard-like traffic: locks from 100 ms to 2 s, a fifth of the queues
# created during the run, no warm-up, finished messages removed (so quiet
# queues go empty between locks and come back).
MIX = ["--lock-ms", "100", "--lock-ms-max", "2000", "--new-queues-pct", "20",
       "--warmup", "0s", "--grace", "15s"]
METRICS_PORTS = (9101, 9102, 9103)
TRAFFIC_S = int(os.environ.get("TRAFFIC_S", "20"))
DRAIN_LOCKS = int(os.environ.get("DRAIN_LOCKS", "300000"))
DRAIN_QUEUES = int(os.environ.get("DRAIN_QUEUES", "3000"))
KILLS = int(os.environ.get("KILLS", "5"))
MEASURE_S = float(os.environ.get("MEASURE_S", "10"))
# The empty cluster's window: under 1 % of a core is about 30 clock ticks in
# 30 s, so a 10 s window moves by a tenth of a point with one tick.
IDLE_S = float(os.environ.get("IDLE_S", "30"))
QUIET_S = float(os.environ.get("QUIET_S", "30"))
OUT = os.path.join(ROOT, "bench")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Redis:
    def __init__(self, work):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", work, "--notify-keyspace-events", "Kz"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        for _ in range(100):
            if self.cli("ping").strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def cli(self, *args, stdin=None):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], input=stdin,
                             capture_output=True, text=True)
        return out.stdout

    def flush(self):
        self.cli("flushall")
        self.cli("config", "resetstat")

    def cpu_seconds(self):
        total = 0.0
        for line in self.cli("info", "cpu").splitlines():
            if line.startswith(("used_cpu_sys:", "used_cpu_user:")):
                total += float(line.split(":")[1])
        return total

    def total_commands(self):
        for line in self.cli("info", "stats").splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.split(":")[1])
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Cluster:
    """A local-3 cluster on Redis, through scripts/cluster.sh."""

    def __init__(self, work, redis_url):
        self.cfg = os.path.join(work, "local-3")
        os.makedirs(self.cfg, exist_ok=True)
        self.work = work
        self.env = dict(os.environ, DECKHAND_BIN=BIN, DECKHAND_RUN_DIR=os.path.join(work, "run"),
                        DECKHAND_STORE_URL=redis_url)
        self.generation = 0

    def start(self, fresh=False, polling=False):
        """`polling`: the fallback, with tasks.notifications = "off"."""
        self.env["DECKHAND_TASKS_NOTIFICATIONS"] = "off" if polling else "auto"
        if fresh:
            self.generation += 1
            for n in (1, 2, 3):
                src = os.path.join(ROOT, f"cluster-config/local-3/node{n}.toml")
                text = open(src).read().replace(
                    'data_dir = "data/node%d"' % n,
                    'data_dir = "%s/data%d/node%d"' % (self.work, self.generation, n))
                open(os.path.join(self.cfg, f"node{n}.toml"), "w").write(text)
        subprocess.run([os.path.join(ROOT, "scripts/cluster.sh"), "start", self.cfg],
                       env=self.env, check=True, capture_output=True)

    def stop(self):
        subprocess.run([os.path.join(ROOT, "scripts/cluster.sh"), "stop", self.cfg],
                       env=self.env, capture_output=True)

    def pid(self, node):
        path = os.path.join(self.env["DECKHAND_RUN_DIR"], f"node{node}.pid")
        return int(open(path).read().strip())

    def pids(self):
        return [self.pid(n) for n in (1, 2, 3)]

    def ctl(self, *args):
        out = subprocess.run([BIN, "ctl", "--addr", "127.0.0.1:7201", "--json", *args],
                             capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait_settled(self):
        """Until every shard has an owner that has worked it: the cluster runs,
        as an operator's does (its own start-up is measured by failover and
        handoff, not here)."""
        for _ in range(1200):
            table = self.ctl("shards")
            if table and all(r.get("owner") and r.get("passes", 0) >= 1 for r in table):
                return
            time.sleep(0.05)
        raise RuntimeError("the cluster did not settle")

    def leader(self):
        for _ in range(300):
            s = self.ctl("status")
            if s and s.get("leader_id"):
                return s["leader_id"]
            time.sleep(0.05)
        raise RuntimeError("no leader")

    def busiest_follower(self):
        table = self.ctl("shards") or []
        counts = {}
        for row in table:
            if row.get("owner"):
                counts[row["owner"]] = counts.get(row["owner"], 0) + 1
        return max(counts, key=counts.get)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure_idle(redis, pids, seconds=None):
    """Redis commands per second and per-process CPU and RSS over `seconds`
    (MEASURE_S), and housekeeping calls per second of the nodes."""
    hz = os.sysconf("SC_CLK_TCK")
    c0, t0 = redis.total_commands(), {p: cpu_ticks(p) for p in pids}
    r0 = redis.cpu_seconds()
    k0 = node_calls()
    start = time.time()
    time.sleep(seconds or MEASURE_S)
    elapsed = time.time() - start
    c1 = redis.total_commands()
    r1 = redis.cpu_seconds()
    cpu = [100.0 * (cpu_ticks(p) - t0[p]) / hz / elapsed for p in pids]
    return {
        # Every command Redis ran, those inside scripts included.
        "redis_commands_per_s": round((c1 - c0) / elapsed, 1),
        "redis_cpu_percent": round(100.0 * (r1 - r0) / elapsed, 1),
        "cpu_percent_per_process": [round(c, 2) for c in cpu],
        "rss_mib_per_process": [round(rss_kib(p) / 1024, 1) for p in pids],
        "node_calls_per_s": round((node_calls() - k0) / elapsed, 1),
    }


def make_quiet_queues(redis, n):
    """Deckard's normal state: every queue holds a waiting message, one pulled
    (ack deadline in 5 min) and one locked for an hour; nothing is due."""
    now = int(time.time() * 1000)
    lines = []
    for i in range(n):
        k = f"deckard_v1:queue:{{quiet::q{i}}}"
        lines.append(f"ZADD {k} 1 a\nZADD {k}:tmp {now + 300_000} p\n"
                     f"ZADD {k}:lock_ack {now + 3_600_000} l\n")
    redis.cli("--pipe", stdin="".join(lines))


def node_calls():
    """Housekeeping calls of the local-3 nodes so far (deckhand_task_runs_total, ok)."""
    total = 0.0
    for port in METRICS_PORTS:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                body = b""
                while chunk := c.recv(65536):
                    body += chunk
        except OSError:
            continue
        for line in body.decode(errors="replace").splitlines():
            if line.startswith('deckhand_task_runs_total{outcome="ok"}'):
                total += float(line.split()[-1])
    return total


def measure_quiet(redis, pids, settle_s):
    """The first `settle_s` after start (start-up: discovery, first sweep) and
    then a steady window of QUIET_S: 30 s spans one sweep interval and one
    discovery interval (the defaults), so a discovery does not fall in or
    out of it by chance. Its sweeps are the second round after start-up,
    about 10 % under the long-run rate (docs/benchmarks.md)."""
    first = measure_idle(redis, pids, settle_s)
    steady = measure_idle(redis, pids, QUIET_S)
    steady["startup_window"] = first
    return steady


def baseline(redis, duration_s, extra=()):
    return subprocess.Popen(
        [BIN, "load", "--store", redis.url, "--baseline-housekeeper", "--duration",
         f"{duration_s}s", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def load(redis, seconds, queues, rate=RATE, extra=()):
    return subprocess.Popen(
        [BIN, "load", "--store", redis.url, "--queues", str(queues), "--rate", str(rate),
         "--duration", f"{seconds}s", *MIX, "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def finish(proc):
    out, _ = proc.communicate()
    return json.loads(out.strip().splitlines()[-1])


def with_faults(redis, proc_start, faults):
    """Runs the traffic while `faults` [(seconds after the traffic starts, fn, label)] fire."""
    traffic = load(redis, TRAFFIC_S, LATENESS_QUEUES)
    t0 = time.time() + 2.0  # --warmup 2s: the timeline starts after it
    events = []
    for at, fn, label in faults:
        delay = t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)
        fn()
        events.append({"at_s": round(time.time() - t0, 2), "what": label})
    return finish(traffic), events


def rate_series(timeline):
    """(t, messages back per second) over 1 s windows, from cumulative
    (t, count) samples taken every half second."""
    out = []
    for (t0, c0), (t1, c1) in zip(timeline, timeline[2:]):
        if t1 > t0:
            out.append(((t0 + t1) / 2, (c1 - c0) / (t1 - t0)))
    return out


def main():
    if not os.path.exists(BIN):
        sys.exit(f"bench.py: {BIN} is missing; build it with cargo build --release")
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="deckhand-bench-")
    redis = Redis(work)
    cluster = Cluster(work, redis.url)
    results = {"deckhand": {}, "baseline": {}, "polling": {}, "config": {
        "quiet_queues": QUIET_QUEUES, "queues": LATENESS_QUEUES, "rate_per_s": RATE,
        "hot_rate_per_s": HOT_RATE, "traffic_s": TRAFFIC_S, "drain_locks": DRAIN_LOCKS,
        "drain_queues": DRAIN_QUEUES, "lock_ms": "100-2000", "new_queues_pct": 20,
        "kills": KILLS, "cpus": os.cpu_count()}}
    d, b, p = results["deckhand"], results["baseline"], results["polling"]
    # Taken now: the run itself rewrites bench/*.json, which would read as "dirty" later.
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    started = time.time()
    try:
        # 1. A cluster with no queues at all.
        log(f"1/7 no queues: {IDLE_S:.0f} s each")
        cluster.start(fresh=True)
        time.sleep(3)
        d["empty"] = measure_idle(redis, cluster.pids(), IDLE_S)
        cluster.stop()
        proc = baseline(redis, int(IDLE_S) + 30)
        time.sleep(2)
        b["empty"] = measure_idle(redis, [proc.pid], IDLE_S)
        proc.terminate()
        proc.wait()

        # 2. Quiet queues: what Deckard's normal state costs.
        for n in QUIET_QUEUES:
            key = f"quiet_{n}"
            settle = 15 if n <= 10_000 else 30
            log(f"2/7 quiet: {n} queues (lock events, polling, baseline)")
            make_quiet_queues(redis, n)
            cluster.start(fresh=True)
            d[key] = measure_quiet(redis, cluster.pids(), settle)
            cluster.stop()
            cluster.start(fresh=True, polling=True)
            p[key] = measure_quiet(redis, cluster.pids(), settle)
            cluster.stop()
            proc = baseline(redis, 600)
            b[key] = measure_quiet(redis, [proc.pid], settle)
            proc.terminate()
            proc.wait()
            redis.flush()

        # 3. Lateness as consumers see it, Deckard-like traffic, no faults.
        log(f"3/7 lateness: {LATENESS_QUEUES} queues, {RATE}/s for {TRAFFIC_S} s, 100-2000 ms locks")
        cluster.start(fresh=True)
        cluster.wait_settled()
        d["lateness"] = finish(load(redis, TRAFFIC_S, LATENESS_QUEUES))
        cluster.stop()
        redis.flush()
        cluster.start(fresh=True, polling=True)
        cluster.wait_settled()
        p["lateness"] = finish(load(redis, TRAFFIC_S, LATENESS_QUEUES))
        cluster.stop()
        redis.flush()
        proc = baseline(redis, TRAFFIC_S + 60)
        b["lateness"] = finish(load(redis, TRAFFIC_S, LATENESS_QUEUES))
        proc.terminate()
        proc.wait()
        redis.flush()

        # 4. One hot queue: deckhand's calls on it are bounded by the coalescing.
        log(f"4/7 hot queue: {HOT_RATE}/s on one queue for {TRAFFIC_S} s")
        cluster.start(fresh=True)
        cluster.wait_settled()
        k0, t0 = node_calls(), time.time()
        d["hot"] = finish(load(redis, TRAFFIC_S, 1, rate=HOT_RATE))
        d["hot"]["node_calls_per_s"] = round((node_calls() - k0) / (time.time() - t0), 1)
        d["hot"]["timeline"] = []
        cluster.stop()
        redis.flush()
        proc = baseline(redis, TRAFFIC_S + 60)
        b["hot"] = finish(load(redis, TRAFFIC_S, 1, rate=HOT_RATE))
        b["hot"]["timeline"] = []
        proc.terminate()
        proc.wait()
        redis.flush()

        # 3. Throughput over time through faults.
        log("5/7 throughput through faults")
        cluster.start(fresh=True)
        cluster.wait_settled()
        victim = {}

        def kill_follower():
            victim["f"] = cluster.busiest_follower()
            os.kill(cluster.pid(victim["f"]), signal.SIGKILL)

        def kill_leader():
            victim["l"] = cluster.leader()
            os.kill(cluster.pid(victim["l"]), signal.SIGKILL)

        summary, events = with_faults(redis, time.time(), [
            (6, kill_follower, "kill -9 a follower"),
            (10, cluster.start, "restart it"),
            (13, kill_leader, "kill -9 the leader"),
            (16, cluster.start, "restart it"),
        ])
        d["faults"] = {"timeline": summary["timeline"], "events": events,
                       "unlock_lateness_ms": summary["unlock_lateness_ms"],
                       "missing": summary["missing"]}
        cluster.stop()
        redis.flush()
        box = {"proc": baseline(redis, TRAFFIC_S + 60)}

        def kill_baseline():
            box["proc"].kill()
            box["proc"].wait()

        def restart_baseline():
            box["proc"] = baseline(redis, TRAFFIC_S + 60)

        summary, events = with_faults(redis, time.time(), [
            (6, kill_baseline, "kill -9 the housekeeper"),
            (10, restart_baseline, "restart it (a 4 s replacement; Kubernetes takes 15-60 s)"),
        ])
        box["proc"].terminate()
        box["proc"].wait()
        b["faults"] = {"timeline": summary["timeline"], "events": events,
                       "unlock_lateness_ms": summary["unlock_lateness_ms"],
                       "missing": summary["missing"]}
        redis.flush()

        # 4. Drain: expired locks all at once.
        log(f"6/7 drain: {DRAIN_LOCKS} expired locks over {DRAIN_QUEUES} queues")
        cluster.start(fresh=True)
        cluster.wait_settled()
        d["drain"] = finish(subprocess.Popen(
            [BIN, "load", "--store", redis.url, "--queues", str(DRAIN_QUEUES), "--expired-locks",
             str(DRAIN_LOCKS), "--admin", "127.0.0.1:7201", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        cluster.stop()
        redis.flush()
        signal_file = os.path.join(work, "written")
        proc = baseline(redis, 600, ["--start-file", signal_file, "--stop-when-idle"])
        writer = subprocess.Popen(
            [BIN, "load", "--store", redis.url, "--queues", str(DRAIN_QUEUES), "--expired-locks",
             str(DRAIN_LOCKS), "--signal-file", signal_file, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        b["drain"] = finish(writer)
        b["drain_housekeeper"] = finish(proc)
        redis.flush()
        # What this Redis sustains for the same moves, whoever sends them.
        results["redis_limit"] = finish(subprocess.Popen(
            [BIN, "load", "--store", redis.url, "--queues", str(DRAIN_QUEUES), "--redis-limit",
             str(DRAIN_LOCKS), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        redis.flush()

        # 5. Failover and handoff (deckhand; the baseline has none).
        log(f"7/7 failover and handoff: {KILLS} kills each")
        env = dict(os.environ, DECKHAND_BIN=BIN, KILLS=str(KILLS))
        subprocess.run([os.path.join(ROOT, "scripts/failover.sh")], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        d["failover"] = json.load(open(os.path.join(OUT, "failover.json")))
        subprocess.run([os.path.join(ROOT, "scripts/handoff.py")], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        d["handoff"] = json.load(open(os.path.join(OUT, "handoff.json")))
    finally:
        cluster.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = round(time.time() - started, 1)
    results["commit"] = commit
    results["date"] = time.strftime("%Y-%m-%d")
    results["ratios"] = ratios(d, b)
    limit = results["redis_limit"]["elements_per_s"]
    results["ratios"]["drain_deckhand_vs_redis_limit"] = ratio(d["drain"]["drain_per_s"], limit)
    results["ratios"]["drain_baseline_vs_redis_limit"] = ratio(b["drain"]["drain_per_s"], limit)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plots(d, b, p)
    print(table(results))


def ratio(a, b):
    return round(a / b, 3) if b else None


def ratios(d, b):
    dl, bl = d["lateness"]["unlock_lateness_ms"], b["lateness"]["unlock_lateness_ms"]
    out = {
        "unlock_lateness_p50": ratio(dl["p50"], bl["p50"]),
        "unlock_lateness_p99": ratio(dl["p99"], bl["p99"]),
        # Both drains timed the same way: by the writer, from the moment the
        # locks are written until it sees every lock set empty.
        "drain_elements_per_s": ratio(d["drain"]["drain_per_s"], b["drain"]["drain_per_s"]),
    }
    for n in QUIET_QUEUES:
        k = f"quiet_{n}"
        out[f"{k}_redis_cpu_percent"] = ratio(d[k]["redis_cpu_percent"], b[k]["redis_cpu_percent"])
        out[f"{k}_redis_commands_per_s"] = ratio(d[k]["redis_commands_per_s"],
                                                 b[k]["redis_commands_per_s"])
    return out


def table(r):
    d, b, p, x = r["deckhand"], r["baseline"], r["polling"], r["ratios"]
    rows = []
    for name, key in (("lateness mix", "lateness"), ("hot queue", "hot")):
        for q in ("p50", "p99", "max"):
            rows.append((f"{name}: unlock lateness {q} (ms)", d[key]["unlock_lateness_ms"][q],
                         p.get(key, {}).get("unlock_lateness_ms", {}).get(q, "-"),
                         b[key]["unlock_lateness_ms"][q]))
    rows.append(("hot queue: deckhand calls/s", d["hot"]["node_calls_per_s"], "-", "-"))
    for n in QUIET_QUEUES:
        k = f"quiet_{n}"
        for label, f in (("Redis CPU %", lambda v: v["redis_cpu_percent"]),
                         ("Redis commands/s", lambda v: v["redis_commands_per_s"]),
                         ("housekeeper CPU %", lambda v: round(sum(v["cpu_percent_per_process"]), 1)),
                         ("housekeeper RSS MiB", lambda v: round(sum(v["rss_mib_per_process"]), 1))):
            rows.append((f"quiet {n}: {label}", f(d[k]), f(p[k]), f(b[k])))
    rows += [
        ("no queues: CPU % per node", max(d["empty"]["cpu_percent_per_process"]), "-",
         b["empty"]["cpu_percent_per_process"][0]),
        ("no queues: RSS MiB per node", max(d["empty"]["rss_mib_per_process"]), "-",
         b["empty"]["rss_mib_per_process"][0]),
        ("drain (elements/s)", round(d["drain"]["drain_per_s"]), "-",
         round(b["drain"]["drain_per_s"])),
        ("drain, share of the Redis limit", x["drain_deckhand_vs_redis_limit"], "-",
         x["drain_baseline_vs_redis_limit"]),
        ("failover after kill -9, median / max (ms)",
         f"{d['failover']['median_ms']} / {d['failover']['max_ms']}", "-", "none"),
        ("failover: survivors' lease lapses", d["failover"].get("lease_lapses", "-"), "-", "-"),
        ("handoff after a crash / SIGTERM, median (ms)",
         f"{d['handoff']['crash']['median_ms']} / {d['handoff']['graceful']['median_ms']}", "-",
         "until replaced"),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'figure':<{w}}  {'deckhand':>14}  {'polling':>10}  {'baseline':>14}"]
    for name, dv, pv, bv in rows:
        lines.append(f"{name:<{w}}  {str(dv):>14}  {str(pv):>10}  {str(bv):>14}")
    lines.append(f"(polling = deckhand with tasks.notifications = off; whole run {r['elapsed_s']} s)")
    return "\n".join(lines)


def plots(d, b, results_polling):
    def cdf(summary):
        return [(max(ms, 0.5), q * 100) for q, ms in summary["unlock_lateness_quantiles_ms"]]
    svgplot.write(os.path.join(OUT, "lateness.svg"),
                  title="Unlock lateness as consumers see it (CDF)",
                  xlabel="ms after the unlock time (log scale)", ylabel="% of unlocked messages",
                  series=[("deckhand, lock events", cdf(d["lateness"])),
                          ("deckhand, polling fallback", cdf(results_polling["lateness"])),
                          ("baseline (1 s tick)", cdf(b["lateness"]))],
                  xlog=True)
    svgplot.write(os.path.join(OUT, "throughput.svg"),
                  title="Messages coming back per second, through faults",
                  xlabel="seconds since the traffic started", ylabel="messages/s",
                  series=[("deckhand", rate_series(d["faults"]["timeline"])),
                          ("baseline", rate_series(b["faults"]["timeline"]))],
                  markers=[(e["at_s"], "deckhand: " + e["what"]) for e in d["faults"]["events"]]
                  + [(e["at_s"], "baseline: " + e["what"]) for e in b["faults"]["events"]])


if __name__ == "__main__":
    main()
