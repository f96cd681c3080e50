#!/usr/bin/env python3
"""Checks that a cluster keeps every shard owned and every lease renewed
with a very large number of queues.

Runs the local-3 cluster of release binaries, each node on the embedded
store holding QUEUES queues (default 1,000,000; `memory://?queues=N`, one
message each), so the leader discovers them all, every owner fetches its
shards' lists (paged) and reports their figures (chunked), and the followers
housekeep them. After a start-up allowance (STARTUP, default 120 s) it
watches for DURATION seconds (default 60) and fails unless, at every look:

- every shard has an owner and its lease is valid (`ctl shards`);
- every follower's own lease is valid (`ctl status`);
- the leader's lists hold every queue;
- the Raft term does not change (no election while the nodes are busy).

At every look it also scrapes the leader's /metrics, which builds the queue
gauges from every queue's figures, and reports the slowest scrape; a look
whose leader's /metrics does not answer fails.

It also reports the highest RSS and CPU of the nodes. Uses the local-3 ports;
stop a running local-3 cluster first.

    scripts/scale-check.py
    QUEUES=400000 DURATION=30 scripts/scale-check.py

Prints one line per look and a JSON summary; exits 1 if a check failed.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import http.client
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMINS = {1: "127.0.0.1:7201", 2: "127.0.0.1:7202", 3: "127.0.0.1:7203"}
METRICS = {1: "127.0.0.1:9101", 2: "127.0.0.1:9102", 3: "127.0.0.1:9103"}


def ctl(bin_path, addr, *args):
    try:
        out = subprocess.run([bin_path, "ctl", "--addr", addr, "--json", *args],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
    return ticks, rss


def scrape(node):
    """Seconds one GET of the node's /metrics took, or None if it failed."""
    t = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{METRICS[node]}/metrics", timeout=30) as r:
            r.read()
    except (OSError, http.client.HTTPException):
        return None
    return time.monotonic() - t


def look(bin_path, terms=None, leader_out=None):
    """(problems, queues listed) as seen right now; adds the leader's term
    to `terms` and its id to `leader_out` when given."""
    problems = []
    statuses = {n: ctl(bin_path, a, "status") for n, a in ADMINS.items()}
    leader = next((s["leader_id"] for s in statuses.values() if s and s.get("leader_id")), None)
    if leader is None:
        return ["no leader"], 0
    if terms is not None and statuses.get(leader):
        terms.add(statuses[leader]["term"])
    if leader_out is not None:
        leader_out.append(leader)
    for n, s in statuses.items():
        if s is None:
            problems.append(f"node {n} does not answer")
        elif n != leader and s["lease_remaining_ms"] == 0:
            problems.append(f"node {n}: no lease")
    table = ctl(bin_path, ADMINS[leader], "shards")
    if table is None:
        return problems + ["ctl shards failed"], 0
    unowned = [s["shard"] for s in table if s["owner"] is None]
    expired = [s for s in table if s["owner"] != leader and s["lease"] != "valid"]
    if unowned:
        problems.append(f"{len(unowned)} shards without an owner")
    if expired:
        leases = sorted({(s["owner"], s["lease"]) for s in expired})
        problems.append(f"leader {leader}: {len(expired)} shards whose owner's lease is not "
                        f"valid by the leader's view {leases}")
    return problems, sum(s["queues"] for s in table)


def main():
    queues = int(os.environ.get("QUEUES", "1000000"))
    duration = float(os.environ.get("DURATION", "60"))
    startup = float(os.environ.get("STARTUP", "120"))
    bin_path = os.environ.get("DECKHAND_BIN")
    if not bin_path:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        bin_path = os.path.join(ROOT, "target/release/deckhand")
    work = tempfile.mkdtemp()
    cfg = os.path.join(work, "local-3")
    os.makedirs(cfg)
    for n in (1, 2, 3):
        with open(os.path.join(ROOT, f"cluster-config/local-3/node{n}.toml")) as f:
            text = f.read()
        text = re.sub(r'^data_dir = .*$', f'data_dir = "{work}/data/node{n}"', text, flags=re.M)
        with open(os.path.join(cfg, f"node{n}.toml"), "w") as f:
            f.write(text)
    env = dict(os.environ, DECKHAND_BIN=bin_path, DECKHAND_RUN_DIR=os.path.join(work, "run"),
               DECKHAND_STORE_URL=f"memory://?queues={queues}")
    summary = {"queues": queues, "duration_s": duration, "looks": 0, "failed_looks": 0,
               "problems": [], "max_rss_mib": 0, "cpu_percent_per_node": [],
               "slowest_leader_scrape_s": 0.0, "terms": []}
    hz = os.sysconf("SC_CLK_TCK")
    try:
        subprocess.run([os.path.join(ROOT, "scripts/cluster.sh"), "start", cfg], env=env,
                       check=True, capture_output=True)
        pids = [int(open(os.path.join(work, "run", f"node{n}.pid")).read()) for n in (1, 2, 3)]
        start = time.monotonic()
        # Start-up: until the lists hold every queue and nothing is wrong.
        while True:
            problems, listed = look(bin_path)
            elapsed = time.monotonic() - start
            print(f"start-up {elapsed:.0f} s: {listed} queues listed; {problems or 'ok'}", flush=True)
            if not problems and listed == queues:
                break
            if elapsed > startup:
                summary["problems"].append(f"not settled after {startup:.0f} s: {problems}, "
                                           f"{listed} of {queues} queues listed")
                break
            time.sleep(2)
        summary["settled_after_s"] = round(time.monotonic() - start, 1)
        t0 = {p: proc_stat(p)[0] for p in pids}
        w0 = time.monotonic()
        terms = set()
        while time.monotonic() - w0 < duration:
            leaders = []
            problems, listed = look(bin_path, terms, leaders)
            if listed != queues:
                problems.append(f"{listed} of {queues} queues listed")
            for n in leaders:
                took = scrape(n)
                if took is None:
                    problems.append(f"leader {n}: /metrics did not answer")
                else:
                    summary["slowest_leader_scrape_s"] = max(
                        summary["slowest_leader_scrape_s"], round(took, 2))
            summary["looks"] += 1
            if problems:
                summary["failed_looks"] += 1
                summary["problems"].extend(problems)
            for p in pids:
                summary["max_rss_mib"] = max(summary["max_rss_mib"], proc_stat(p)[1])
            print(f"{time.monotonic() - w0:.0f} s: {problems or 'every shard owned, every lease valid'}",
                  flush=True)
            time.sleep(2)
        elapsed = time.monotonic() - w0
        summary["terms"] = sorted(terms)
        if len(terms) > 1:
            summary["problems"].append(f"the term changed while watching: {sorted(terms)}")
        summary["cpu_percent_per_node"] = [
            round(100.0 * (proc_stat(p)[0] - t0[p]) / hz / elapsed, 1) for p in pids]
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/cluster.sh"), "stop", cfg], env=env,
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    sys.exit(1 if summary["problems"] else 0)


if __name__ == "__main__":
    main()
