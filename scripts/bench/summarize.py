"""Summarises target/bench/results*.jsonl (written by run_all.sh): per item and side, the
median over rounds of the per-run medians, the spread (min..max of the per-run medians),
the load averages seen, and the ugc-pipe / PyTorch ratios quoted in docs/benchmarks.md.

    .venv/bin/python scripts/bench/summarize.py target/bench/results.jsonl
"""
import collections
import json
import statistics
import sys


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    loads = [r["loadavg"][0] for r in rows if r.get("bench") == "machine"]
    steps = collections.defaultdict(list)
    lat = collections.defaultdict(list)
    for r in rows:
        if r.get("bench") == "train_step":
            # The PyTorch twin runs with torch.optim.Adam's defaults and with fused=True.
            impl = r["impl"] if r["impl"] == "ugc-pipe" else f"pytorch/{r.get('adam', 'torch')}"
            steps[(r["step"], impl, r["threads"])].append(r["images_per_s"])
        elif r.get("bench") == "latency":
            lat[(r["model"], r["impl"], r["threads"])].append((r["median_ms"], r.get("macs_ratio")))
    print(f"1-min load average during the runs: {min(loads):.2f} .. {max(loads):.2f}")
    print("\n| step | threads | ugc-pipe img/s (runs) | PyTorch Adam | PyTorch img/s (runs) | ratio |")
    print("|---|---|---|---|---|---|")
    fmt = lambda v: ", ".join(f"{x:.2f}" for x in v)
    for (step, impl, th) in sorted(k for k in steps if k[1] == "ugc-pipe"):
        rs = steps[(step, impl, th)]
        rm = statistics.median(rs)
        twins = [(a, steps.get((step, f"pytorch/{a}", th), [])) for a in ("torch", "fused")]
        twins = [(a, ps) for a, ps in twins if ps] or [("-", [])]
        for adam, ps in twins:
            if ps:
                pm = statistics.median(ps)
                print(f"| {step} | {th} | {rm:.2f} ({fmt(rs)}) | {adam} | {pm:.2f} ({fmt(ps)}) | {rm / pm:.3f} |")
            else:
                print(f"| {step} | {th} | {rm:.2f} ({fmt(rs)}) | - | - | - |")
    print("\n| model | threads | MACs ratio | ugc-pipe ms (runs) | speedup | PyTorch ms (runs) | speedup | ugc-pipe/PyTorch time |")
    print("|---|---|---|---|---|---|---|---|")
    for th in sorted({k[2] for k in lat}):
        base_r = statistics.median(v[0] for v in lat[("original", "ugc-pipe", th)])
        base_p = statistics.median(v[0] for v in lat.get(("original", "pytorch", th), [(float("nan"), 0)]))
        for model in ["original", "student_w0.375", "student_smallest"]:
            rv = [v[0] for v in lat[(model, "ugc-pipe", th)]]
            pv = [v[0] for v in lat.get((model, "pytorch", th), [])]
            mr = lat[(model, "ugc-pipe", th)][0][1]
            rm = statistics.median(rv)
            pm = statistics.median(pv) if pv else float("nan")
            fmt = lambda v: ", ".join(f"{x:.0f}" for x in v)
            print(f"| {model} | {th} | {mr:.2f} | {rm:.0f} ({fmt(rv)}) | {base_r / rm:.2f} | "
                  f"{pm:.0f} ({fmt(pv)}) | {base_p / pm:.2f} | {rm / pm:.3f} |")
    for r in rows:
        if r.get("bench") in ("store_hash", "engine_cold_run", "engine_noop_rerun"):
            print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.jsonl")
