#!/usr/bin/env python3
"""Turns the measured runs of scripts/bench/slurm_dag.sh into figures.

    analyze.py RESULTS.jsonl RUNDIR...

Each RUNDIR holds what one tool's run left: meta.json (tool, label, stages, start, end),
times/<stage> (the stage command's own start and end, written by the command itself),
events.log (the tool's output, each line prefixed with the time it arrived),
calls.log (one line per Slurm client call, from the PATH wrappers) and sdiag.txt (the
controller's RPC counts since `sdiag -r` just before the run). Appends one JSON line per
run to RESULTS.jsonl and prints the markdown table.

Per stage, both tools:
  span     = the head seeing the stage done - the head having submitted it
  own      = t1 - t0 of the stage command (its sleep and file write)
  overhead = span - own
  start    = t0 - submitted (Slurm's scheduling, job start, the tool's job-side start-up)
  end      = done seen - t1 (the tool's commit, then the time until its next poll sees it)
ugc-pipe: span is the `secs` of its `finished` event (the head's own monotonic clock,
from sbatch's return to the poll that found the committed record); submitted = arrival
of that event - secs. Snakemake: submitted = arrival of "Job N has been submitted with
SLURM jobid", done = arrival of "Finished jobid: N (Rule: R)" (its log's own timestamps
have one-second resolution, so lines are stamped on arrival, to the microsecond).
"""

import json
import os
import re
import statistics
import sys
import time


def read_times(d):
    out = {}
    tdir = os.path.join(d, "times")
    for name in os.listdir(tdir):
        with open(os.path.join(tdir, name)) as f:
            parts = f.read().split()
        if len(parts) != 4:
            sys.exit(f"analyze.py: {tdir}/{name}: expected 'name t0 t1 jobid', got {parts}")
        out[name] = (float(parts[1]), float(parts[2]), parts[3])
    return out


def stamped(path):
    with open(path) as f:
        for line in f:
            stamp, _, rest = line.rstrip("\n").partition(" ")
            yield float(stamp), rest


def spans_ugc(d):
    """{stage: (submitted, done_seen)} from ugc-pipe's --json events."""
    spans = {}
    for t, rest in stamped(os.path.join(d, "events.log")):
        if not rest.startswith("{"):
            continue
        ev = json.loads(rest)
        if ev.get("event") == "finished":
            if ev.get("outcome") != "executed":
                sys.exit(f"analyze.py: {d}: stage {ev.get('node')} ended {ev.get('outcome')}: {ev.get('error')}")
            spans[ev["node"]] = (t - ev["secs"], t)
    return spans


SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")
FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")


def spans_snakemake(d):
    """{rule: (submitted, done_seen)} from Snakemake's stamped log."""
    submitted, done = {}, {}
    for t, rest in stamped(os.path.join(d, "events.log")):
        m = SUBMITTED.search(rest)
        if m:
            submitted[m.group(1)] = t
            continue
        m = FINISHED.search(rest)
        if m:
            done[m.group(1)] = (m.group(2), t)
    spans = {}
    for jid, (rule, t) in done.items():
        if rule == "all":
            continue
        if jid not in submitted:
            sys.exit(f"analyze.py: {d}: rule {rule} (job {jid}) finished without a submission line")
        spans[rule] = (submitted[jid], t)
    return spans


STATUS = {"squeue", "sacct", "scontrol", "sinfo", "sstat", "sacctmgr"}


def calls(d, start, end):
    """Counts per command: made by the head (no job id), and made inside jobs."""
    head, in_job = {}, {}
    with open(os.path.join(d, "calls.log")) as f:
        for line in f:
            parts = line.split(" ", 3)
            t, cmd, job = float(parts[0]), parts[1], parts[2]
            if not (start - 1 <= t <= end + 1):
                continue
            bucket = head if job == "-" else in_job
            bucket[cmd] = bucket.get(cmd, 0) + 1
    return head, in_job


SDIAG_LINE = re.compile(r"^\s*([A-Z_]+)\s+\(\s*\d+\)\s+count:(\d+)")


def sdiag(d):
    """RPC counts by message type, from the `by message type` section."""
    path = os.path.join(d, "sdiag.txt")
    counts, section = {}, False
    with open(path) as f:
        for line in f:
            if "by message type" in line:
                section = True
                continue
            if "by user" in line:
                section = False
            m = SDIAG_LINE.match(line) if section else None
            if m:
                counts[m.group(1)] = int(m.group(2))
    return counts


JOBCOMP_FIELD = re.compile(r"(\w+)=(\S*)")


def foreign_jobs(d, start, end):
    """Jobs of other users of the cluster (WorkDir outside this run's folder) that ran
    during the run, from jobcomp/filetxt: their RPCs are in sdiag's counts, not in the
    wrappers' (which count only this tool's calls)."""
    path = os.path.join(os.environ.get("UGC_SLURM_ROOT", "/tmp/ugc-slurm"), "log", "jobcomp.txt")
    if not os.path.exists(path):
        return None
    n = 0
    with open(path) as f:
        for line in f:
            job = dict(JOBCOMP_FIELD.findall(line))
            try:
                t0 = time.mktime(time.strptime(job["StartTime"], "%Y-%m-%dT%H:%M:%S"))
                t1 = time.mktime(time.strptime(job["EndTime"], "%Y-%m-%dT%H:%M:%S"))
            except (KeyError, ValueError):
                continue
            if t0 <= end and t1 + 1 >= start and not job.get("WorkDir", "").startswith(d):
                n += 1
    return n


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def analyze(d):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    times = read_times(d)
    spans = spans_ugc(d) if meta["tool"] == "ugc-pipe" else spans_snakemake(d)
    if set(spans) != set(times) or len(spans) != meta["stages"]:
        sys.exit(
            f"analyze.py: {d}: {len(spans)} stages seen done, {len(times)} wrote their times, "
            f"{meta['stages']} expected"
        )
    over, start_lat, end_lat, own = [], [], [], []
    for stage, (sub, seen) in spans.items():
        t0, t1, _ = times[stage]
        own.append(t1 - t0)
        over.append((seen - sub) - (t1 - t0))
        start_lat.append(t0 - sub)
        end_lat.append(seen - t1)
    wall = meta["end"] - meta["start"]
    head, in_job = calls(d, meta["start"], meta["end"])
    rpc = sdiag(d)
    minutes = wall / 60
    status_head = sum(v for k, v in head.items() if k in STATUS)
    row = {
        "bench": "slurm_dag",
        **meta,
        "wall_s": round(wall, 3),
        "own_s_median": round(med(own), 3),
        "overhead_s_median": round(med(over), 3),
        "overhead_s_mean": round(statistics.mean(over), 3),
        "overhead_s_min": round(min(over), 3),
        "overhead_s_max": round(max(over), 3),
        "start_latency_s_median": round(med(start_lat), 3),
        "end_latency_s_median": round(med(end_lat), 3),
        "head_calls": head,
        "in_job_calls": in_job,
        "head_status_calls_per_min": round(status_head / minutes, 2),
        "head_calls_per_min": round(sum(head.values()) / minutes, 2),
        "in_job_calls_per_min": round(sum(in_job.values()) / minutes, 2),
        "sdiag_rpcs": rpc,
        "sdiag_rpcs_per_min": round(sum(rpc.values()) / minutes, 2),
        "foreign_jobs": foreign_jobs(os.path.abspath(d), meta["start"], meta["end"]),
    }
    return row


def fmt_calls(c):
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rows = [analyze(d) for d in sys.argv[2:]]
    with open(sys.argv[1], "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(
        "| run | stages | wall s | overhead/stage s: median (min-max) | "
        "start / end latency s | head's status calls/min | head's calls, all | "
        "calls from jobs | controller RPCs/min | RPCs/stage | others' jobs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rpcs = sum(r["sdiag_rpcs"].values())
        print(
            f"| {r['label']} | {r['stages']} | {r['wall_s']:.1f} | "
            f"**{r['overhead_s_median']:.2f}** ({r['overhead_s_min']:.2f}-{r['overhead_s_max']:.2f}) | "
            f"{r['start_latency_s_median']:.2f} / {r['end_latency_s_median']:.2f} | "
            f"**{r['head_status_calls_per_min']:.1f}** | {fmt_calls(r['head_calls'])} | "
            f"{fmt_calls(r['in_job_calls'])} | {r['sdiag_rpcs_per_min']:.1f} | "
            f"{rpcs / r['stages']:.1f} | {r['foreign_jobs']} |"
        )
    # Over rounds: each label's median of its per-run figures, the per-run ones listed.
    labels = list(dict.fromkeys(r["label"] for r in rows))
    if len(labels) == len(rows):
        return
    print()
    print(
        "| run | stages | rounds | overhead/stage s (per round) | wall s (per round) | "
        "head's status calls/min (per round) | RPCs/stage (per round) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label in labels:
        rs = [r for r in rows if r["label"] == label]

        def col(f, key):
            vals = [f(r) for r in rs]
            return f"**{med(vals):.{key}f}** ({', '.join(f'{v:.{key}f}' for v in vals)})"

        print(
            f"| {label} | {rs[0]['stages']} | {len(rs)} | "
            f"{col(lambda r: r['overhead_s_median'], 2)} | {col(lambda r: r['wall_s'], 1)} | "
            f"{col(lambda r: r['head_status_calls_per_min'], 1)} | "
            f"{col(lambda r: sum(r['sdiag_rpcs'].values()) / r['stages'], 1)} |"
        )


if __name__ == "__main__":
    main()
