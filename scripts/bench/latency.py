"""PyTorch eager side of issue #7 item 2: batch-1 latency of the models that
`cargo bench --bench latency` exported (same architectures, same input size, same threads).

    .venv/bin/python scripts/bench/latency.py --dir target/bench/latency --threads 2

Prints one JSON line per model: median/min/max ms over --runs timed runs after --warmup.
"""
import argparse
import json
import os
import statistics
import time

import torch

from models import load_exported_arch, resnet_generator, resnet_widths


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default="target/bench/latency")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    base = None
    for name in ["original", "student_w0.375", "student_smallest"]:
        arch = load_exported_arch(os.path.join(a.dir, name))
        assert arch["arch"] == "pix2pix-resnet", arch["arch"]
        g = resnet_generator(resnet_widths(arch), arch["n_blocks"]).to(dev).eval()
        x = torch.randn(1, 3, a.size, a.size, device=dev)
        if a.channels_last:
            g = g.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)
        sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
        times = []
        with torch.no_grad():
            for _ in range(a.warmup):
                g(x)
                sync()
            for _ in range(a.runs):
                sync()
                t = time.perf_counter()
                g(x)
                sync()
                times.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(times)
        base = base or med
        print(json.dumps({"bench": "latency", "impl": "pytorch", "model": name,
                          "params": sum(t.numel() for t in g.parameters()),
                          "median_ms": med, "min_ms": min(times), "max_ms": max(times),
                          "runs": a.runs, "warmup": a.warmup, "speedup": base / med,
                          "device": a.device, "threads": torch.get_num_threads(),
                          "size": a.size, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
