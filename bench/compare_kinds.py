#!/usr/bin/env python3
"""bench/compare_kinds.py: what the block's feed-forward and norm kinds do to quality, at the baseline settings.

Trains one model per variant with `charlm train` (the defaults: latent attention with W = 16,
4 layers, width 128, ctx 64, 2000 steps), each variant changing only --ffn and --norm, one
seed each, and prints a markdown table of the every-token val and test loss the run reports at
its end, with parameters and wall time. It shows what the options do; it does not tune them.

With --speed N it trains nothing: it times training steps instead (`charlm_bench train`, the
baseline model, 30 steps), N rounds with the variants interleaved so that the machine's drift
falls on all alike, and prints each variant's median step time and its ratio to the first's.

Usage: python3 bench/compare_kinds.py --data CORPUS [--charlm build/charlm] [--out DIR]
           [--variants gelu/layernorm,swiglu/layernorm,gelu/rmsnorm,swiglu/rmsnorm] [-- FLAGS...]
       python3 bench/compare_kinds.py --speed 5 [--bench build/charlm_bench] [--threads 2]
FLAGS after -- go to every run (e.g. -- --steps 200 for a quick look).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def variants_of(text):
    out = []
    for variant in text.split(","):
        ffn, _, norm = variant.partition("/")
        if not ffn or not norm:
            sys.exit(f"variant '{variant}': expected FFN/NORM")
        out.append((ffn, norm))
    return out


def speed(args):
    times = {v: [] for v in variants_of(args.variants)}
    for _ in range(args.speed):
        for ffn, norm in times:
            cmd = [args.bench, "train", "--ffn", ffn, "--norm", norm, "--threads", str(args.threads),
                   "--steps", "30", "--json"]
            run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            if run.returncode != 0:
                sys.exit(f"{' '.join(cmd)} exited with {run.returncode}")
            times[(ffn, norm)].append(json.loads(run.stdout)["step_ms"])
    first = statistics.median(next(iter(times.values())))
    print(f"| ffn | norm | step (median of {args.speed}) | vs first |")
    print("|---|---|---|---|")
    for (ffn, norm), ms in times.items():
        m = statistics.median(ms)
        print(f"| {ffn} | {norm} | {m:.2f} ms | {m / first:.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--speed", type=int, default=0, help="time steps in N interleaved rounds instead")
    ap.add_argument("--bench", default="build/charlm_bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--charlm", default="build/charlm")
    ap.add_argument("--out", default="runs/kinds")
    ap.add_argument("--variants", default="gelu/layernorm,swiglu/layernorm,gelu/rmsnorm,swiglu/rmsnorm")
    ap.add_argument("flags", nargs="*", help="more charlm train flags, after --")
    args = ap.parse_args()
    if args.speed > 0:
        return speed(args)
    if not args.data:
        ap.error("--data is required (unless --speed)")

    rows = []
    for ffn, norm in variants_of(args.variants):
        out = os.path.join(args.out, f"{ffn}-{norm}")
        cmd = [args.charlm, "train", "--data", args.data, "--out", out, "--ffn", ffn, "--norm", norm,
               "--json", *args.flags]
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if run.returncode != 0:
            sys.exit(f"{ffn}/{norm}: charlm train exited with {run.returncode}")
        r = json.loads(run.stdout)
        rows.append((ffn, norm, r["params"], r["val_loss"], r["test_loss"], r["tokens_per_s"], r["wall_s"]))

    print("| ffn | norm | parameters | val loss | test loss | tokens/s | wall |")
    print("|---|---|---|---|---|---|---|")
    for ffn, norm, params, val, test, tps, wall in rows:
        print(f"| {ffn} | {norm} | {params:,} | {val:.4f} | {test:.4f} | {tps:,.0f} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
