#!/usr/bin/env python3
"""bench/compare_kinds.py: what the block's feed-forward and norm kinds do to quality, at the baseline settings.

Trains one model per variant with `charlm train` (the defaults: latent attention with W = 16,
4 layers, width 128, ctx 64, 2000 steps), each variant changing only --ffn and --norm, one
seed each, and prints a markdown table of the every-token val and test loss the run reports at
its end, with parameters and wall time. It shows what the options do; it does not tune them.

Usage: python3 bench/compare_kinds.py --data CORPUS [--charlm build/charlm] [--out DIR]
           [--variants gelu/layernorm,swiglu/layernorm,gelu/rmsnorm,swiglu/rmsnorm] [-- FLAGS...]
FLAGS after -- go to every run (e.g. -- --steps 200 for a quick look).
"""
import argparse
import json
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--charlm", default="build/charlm")
    ap.add_argument("--out", default="runs/kinds")
    ap.add_argument("--variants", default="gelu/layernorm,swiglu/layernorm,gelu/rmsnorm,swiglu/rmsnorm")
    ap.add_argument("flags", nargs="*", help="more charlm train flags, after --")
    args = ap.parse_args()

    rows = []
    for variant in args.variants.split(","):
        ffn, _, norm = variant.partition("/")
        if not ffn or not norm:
            sys.exit(f"variant '{variant}': expected FFN/NORM")
        out = os.path.join(args.out, f"{ffn}-{norm}")
        cmd = [args.charlm, "train", "--data", args.data, "--out", out, "--ffn", ffn, "--norm", norm,
               "--json", *args.flags]
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if run.returncode != 0:
            sys.exit(f"{variant}: charlm train exited with {run.returncode}")
        r = json.loads(run.stdout)
        rows.append((ffn, norm, r["params"], r["val_loss"], r["test_loss"], r["tokens_per_s"], r["wall_s"]))

    print("| ffn | norm | parameters | val loss | test loss | tokens/s | wall |")
    print("|---|---|---|---|---|---|---|")
    for ffn, norm, params, val, test, tps, wall in rows:
        print(f"| {ffn} | {norm} | {params:,} | {val:.4f} | {test:.4f} | {tps:,.0f} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
