#!/usr/bin/env python3
"""bench/compare_isa.py: training step time of several builds or kernel choices, side by side in one run.

Each variant is a charlm_bench binary, optionally with environment settings, written
LABEL=PATH[,NAME=VALUE...]. Every round runs each variant once per attention kind, in turn,
each in a fresh process (`charlm_bench train --json`), so that the machine's drift falls on all
of them alike; the table gives the median over the rounds of each run's median step time, and
its ratio to the first variant's. A second table gives the CPU time the process used (all its
threads, start-up and the benchmark's sgemm peak measurement included) divided by its steps:
on a machine that other jobs keep busy, wall-clock times mostly measure the wait for a core,
while CPU time at --threads 1 still measures the work.

Usage: python3 bench/compare_isa.py native=build/charlm_bench portable=build-portable/charlm_bench \\
           generic=build-portable/charlm_bench,LATENTGRAD_ISA=generic [--rounds 5] [--steps 40]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess


def parse_variant(text):
    label, _, rest = text.partition("=")
    if not label or not rest:
        raise SystemExit(f"variant '{text}': expected LABEL=PATH[,NAME=VALUE...]")
    path, *settings = rest.split(",")
    env = dict(os.environ)
    for s in settings:
        name, eq, value = s.partition("=")
        if not eq:
            raise SystemExit(f"variant '{text}': setting '{s}' is not NAME=VALUE")
        env[name] = value
    return label, path, env


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="LABEL=PATH[,NAME=VALUE...]")
    ap.add_argument("--attn", default="latent,mha")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    kinds = args.attn.split(",")
    times = {(label, kind): [] for label, _, _ in variants for kind in kinds}
    cpu_times = {key: [] for key in times}
    kernels = {label: set() for label, _, _ in variants}  # what each variant reports it ran
    for r in range(args.rounds):
        for kind in kinds:
            for label, path, env in variants:
                cmd = [path, "train", "--attn", kind, "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--threads", str(args.threads), "--json"]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                result = json.loads(out)
                times[(label, kind)].append(result["step_ms"])
                cpu_times[(label, kind)].append(1e3 * cpu_s / (args.steps + args.warmup))
                kernels[label].add(result.get("kernels", "?"))  # older builds do not say
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    for title, table in (("step time (ms)", times), ("process CPU time per step (ms)", cpu_times)):
        print(f"\nmedian {title} over {args.rounds} interleaved rounds, {args.threads} threads, "
              f"{args.steps} timed steps each; ratio to {variants[0][0]}\n")
        print("| variant | kernels | " + " | ".join(kinds) + " |")
        print("|---|---|" + "---|" * len(kinds))
        first = variants[0][0]
        for label, _, _ in variants:
            cells = []
            for kind in kinds:
                m = statistics.median(table[(label, kind)])
                ratio = m / statistics.median(table[(first, kind)])
                cells.append(f"{m:.2f} ({ratio:.3f}x)")
            print(f"| {label} | {', '.join(sorted(kernels[label]))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
