#!/usr/bin/env python3
"""bench/compare_ctx.py: what a longer training context does to quality, and what it costs in wall time.

Trains one model per ctx with `charlm train` (the defaults otherwise: latent attention with
W = 16, 4 layers, width 128), each with the same number of training tokens per step
(--tokens, split into batch = tokens / ctx windows), the same steps and the same schedule, and
prints a markdown table of the every-token val and test loss that each run reports at its end,
evaluated at the run's own ctx, with tokens/s and wall time.

With --equal-wall it then trains each ctx again for the wall time the fastest ctx took:
steps = --steps x (that ctx's tokens/s / the fastest's), the schedule stretched to match.

Usage: python3 bench/compare_ctx.py --data CORPUS [--charlm build/charlm] [--out DIR]
           [--ctx 64,256,1024,4096] [--tokens 4096] [--steps 1000] [--equal-wall] [-- FLAGS...]
FLAGS after -- go to every run (e.g. -- --threads 2).
"""
import argparse
import json
import os
import subprocess
import sys


def train(args, ctx, steps, tag):
    out = os.path.join(args.out, f"{tag}-ctx{ctx}")
    batch = args.tokens // ctx
    cmd = [args.charlm, "train", "--data", args.data, "--out", out, "--ctx", str(ctx), "--batch", str(batch),
           "--steps", str(steps), "--warmup", str(max(1, steps // 10)), "--eval-every", str(steps), "--json",
           *args.flags]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if run.returncode != 0:
        sys.exit(f"ctx {ctx}: charlm train exited with {run.returncode}")
    r = json.loads(run.stdout)
    return dict(ctx=ctx, batch=batch, steps=steps, val=r["val_loss"], test=r["test_loss"],
                tps=r["tokens_per_s"], wall=r["wall_s"])


def table(title, rows):
    print(title)
    print("| ctx | batch | steps | val loss | test loss | tokens/s | wall |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ctx']} | {r['batch']} | {r['steps']} | {r['val']:.4f} | {r['test']:.4f} | "
              f"{r['tps']:,.0f} | {r['wall']:.0f} s |")
    print(flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--charlm", default="build/charlm")
    ap.add_argument("--out", default="runs/ctx")
    ap.add_argument("--ctx", default="64,256,1024,4096")
    ap.add_argument("--tokens", type=int, default=4096, help="training tokens per step")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--equal-wall", action="store_true")
    ap.add_argument("flags", nargs="*", help="more charlm train flags, after --")
    args = ap.parse_args()
    ctxs = [int(c) for c in args.ctx.split(",")]
    for c in ctxs:
        if c < 1 or args.tokens % c:
            sys.exit(f"--tokens {args.tokens} is not a whole number of ctx {c} windows")

    rows = [train(args, c, args.steps, "tokens") for c in ctxs]
    table(f"equal tokens: {args.tokens} a step, {args.steps} steps", rows)
    if args.equal_wall:
        fastest = max(r["tps"] for r in rows)
        walled = [train(args, r["ctx"], max(1, round(args.steps * r["tps"] / fastest)), "wall") for r in rows]
        table(f"equal wall time: the fastest ctx's {args.steps} steps", walled)


if __name__ == "__main__":
    main()
