#!/usr/bin/env python3
"""Prefixes every line of stdin with the wall-clock time it arrived (epoch seconds, 6
decimals) and writes it to the file given, flushing each line: the head-side clock for
tools whose own log has one-second timestamps (Snakemake). Also echoes to stdout unless
-q is given."""

import sys
import time


def main():
    args = [a for a in sys.argv[1:] if a != "-q"]
    quiet = len(args) != len(sys.argv) - 1
    if len(args) != 1:
        sys.exit("usage: stamp.py [-q] OUTFILE < lines")
    with open(args[0], "w", buffering=1) as out:
        for raw in sys.stdin.buffer:
            now = time.time()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            out.write(f"{now:.6f} {line}\n")
            if not quiet:
                print(line, flush=True)


if __name__ == "__main__":
    main()
