#!/usr/bin/env python3
"""Measures shard handoff on a local 3-node cluster of real processes.

For each of KILLS rounds (default 10): pick the follower that owns shard 0,
stop it, and time until every shard it owned has a new owner that completed
a work pass over the shard's queues at the new epoch (as `deckhand ctl shards
--json` reports it, polled continuously). Then restart it and wait until the
cluster is balanced and worked again. Done once with `kill -9` (crash: the
leader must wait lease + margin) and once with SIGTERM (graceful: the node
hands its shards back).

Uses the local-3 ports (7101-7103, 7201-7203) with data in a fresh temporary
directory and the embedded store with 256 queues per node
(memory://?queues=256). Stop a running local-3 cluster first.

    scripts/handoff.py                 # release build, 10 kills of each kind
    KILLS=3 scripts/handoff.py
    DECKHAND_BIN=target/debug/deckhand scripts/handoff.py

Prints one line per round and a summary; writes bench/handoff.json.
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMINS = {1: "127.0.0.1:7201", 2: "127.0.0.1:7202", 3: "127.0.0.1:7203"}
DEADLINE = 60.0


def sh(*args, env=None, check=True):
    return subprocess.run(args, cwd=ROOT, env=env, check=check, capture_output=True, text=True)


def ctl(bin_path, addr, *args):
    out = subprocess.run([bin_path, "ctl", "--addr", addr, "--json", *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def shards(bin_path, alive):
    for node in alive:
        table = ctl(bin_path, ADMINS[node], "shards")
        if table is not None:
            return table
    return None


def wait(what, check):
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    sys.exit(f"handoff.py: timed out waiting until {what}")


def settled(bin_path, alive):
    """All shards owned by live nodes and worked at their current epoch."""
    table = shards(bin_path, alive)
    if not table:
        return None
    owners = {s["owner"] for s in table}
    if None in owners or not owners <= set(alive) or any(s["passes"] < 1 for s in table):
        return None
    return table


def main():
    kills = int(os.environ.get("KILLS", "10"))
    bin_path = os.environ.get("DECKHAND_BIN")
    if not bin_path:
        sh("cargo", "build", "--release", "--quiet")
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
               DECKHAND_STORE_URL="memory://?queues=256")

    def cluster(action):
        sh("scripts/cluster.sh", action, cfg, env=env)

    def pid(node):
        with open(os.path.join(work, "run", f"node{node}.pid")) as f:
            return int(f.read().strip())

    results = {}
    try:
        cluster("start")
        for mode, sig in (("crash", signal.SIGKILL), ("graceful", signal.SIGTERM)):
            samples = []
            for round_no in range(1, kills + 1):
                alive = [1, 2, 3]
                table = wait("the cluster is settled", lambda: settled(bin_path, alive))
                victim = table[0]["owner"]
                lost = [s["shard"] for s in table if s["owner"] == victim]
                old_epoch = {s["shard"]: s["epoch"] for s in table}
                os.kill(pid(victim), sig)
                start = time.monotonic()
                alive = [n for n in alive if n != victim]

                def moved_and_worked():
                    t = shards(bin_path, alive)
                    if not t:
                        return None
                    by = {s["shard"]: s for s in t}
                    return all(by[s]["owner"] not in (None, victim) and by[s]["epoch"] > old_epoch[s]
                               and by[s]["passes"] >= 1 for s in lost)

                wait("the stopped node's shards are worked elsewhere", moved_and_worked)
                elapsed_ms = (time.monotonic() - start) * 1000
                samples.append(round(elapsed_ms, 1))
                print(f"{mode} {round_no}: node {victim} stopped, its {len(lost)} shards worked "
                      f"elsewhere after {elapsed_ms:.0f} ms", flush=True)
                if sig == signal.SIGTERM:
                    # Let it exit before restarting it on the same ports.
                    deadline = time.monotonic() + 15
                    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid(victim)}"):
                        time.sleep(0.01)
                cluster("start")
                # Back to three workers, balanced and worked.
                wait("the restarted node owns shards again", lambda: (
                    (t := settled(bin_path, [1, 2, 3])) and any(s["owner"] == victim for s in t)))
            results[mode] = {
                "rounds": len(samples),
                "median_ms": round(statistics.median(samples), 1),
                "max_ms": max(samples),
                "samples_ms": samples,
            }
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/cluster.sh"), "stop", cfg], env=env,
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    for mode, r in results.items():
        print(f"{mode}: median {r['median_ms']} ms, max {r['max_ms']} ms over {r['rounds']} stops")
    os.makedirs(os.path.join(ROOT, "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/handoff.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
