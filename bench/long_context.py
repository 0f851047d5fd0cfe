#!/usr/bin/env python3
"""bench/long_context.py: training throughput and memory of each attention kind against the context length.

For every attention kind and ctx it runs `charlm_bench train` in a fresh process (so that peak
RSS is that run's alone) and prints a markdown table of tokens/s and peak RSS. ctx 256 trains
batch --batch256 (12, the baseline's tokens per step); longer contexts train batch 1. A run
whose step would take longer than --max-step-s, predicted from the kind's previous ctx
(quadratic for mha, linear otherwise), is skipped and marked so. With --rounds R each cell is
the median of R runs, the runs of a round interleaved over the cells.

Usage: python3 bench/long_context.py [--bench build/charlm_bench] [--ctx 256,1024,4096,16384,65536]
           [--kinds latent,latent-w0,mha,mla] [--threads 2] [--steps 3] [--rounds 1] [--recompute]
"""
import argparse
import json
import statistics
import subprocess
import sys

KINDS = {  # label -> charlm_bench flags
    "latent": ["--attn", "latent"],
    "latent-w0": ["--attn", "latent", "--window", "0"],
    "mha": ["--attn", "mha"],
    "mla": ["--attn", "mla"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="build/charlm_bench")
    ap.add_argument("--ctx", default="256,1024,4096,16384,65536")
    ap.add_argument("--kinds", default="latent,latent-w0,mha,mla")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch256", type=int, default=12)
    ap.add_argument("--max-step-s", type=float, default=120.0)
    ap.add_argument("--recompute", action="store_true")
    args = ap.parse_args()
    ctxs = [int(c) for c in args.ctx.split(",")]
    kinds = args.kinds.split(",")
    for k in kinds:
        if k not in KINDS:
            sys.exit(f"unknown kind '{k}' (known: {', '.join(KINDS)})")

    runs = {(k, c): [] for k in kinds for c in ctxs}
    skipped = {}
    for _ in range(args.rounds):
        for k in kinds:
            last = None  # (ctx, step seconds) of the kind's previous ctx
            for c in ctxs:
                if (k, c) in skipped:
                    continue
                batch = args.batch256 if c <= 256 else 1
                if last is not None:
                    growth = c / last[0]
                    predicted = last[1] * (growth * growth if k == "mha" else growth)
                    if predicted > args.max_step_s:
                        skipped[(k, c)] = predicted
                        continue
                cmd = [args.bench, "train", *KINDS[k], "--ctx", str(c), "--batch", str(batch), "--threads",
                       str(args.threads), "--steps", str(args.steps), "--warmup", "1",
                       "--recompute", "1" if args.recompute else "0", "--json"]
                print("$", " ".join(cmd), file=sys.stderr, flush=True)
                out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
                if out.returncode != 0:
                    sys.exit(f"{' '.join(cmd)} exited with {out.returncode}")
                r = json.loads(out.stdout)
                runs[(k, c)].append(r)
                last = (c, r["step_ms"] / 1000.0 * (1 if c > 256 else 256 / c / batch))

    print(f"tokens/s and peak RSS; {args.threads} threads, batch {args.batch256} at ctx <= 256, 1 above"
          f"{', --recompute' if args.recompute else ''}")
    print("| kind | " + " | ".join(f"ctx {c}" for c in ctxs) + " |")
    print("|---|" + "---|" * len(ctxs))
    for k in kinds:
        cells = []
        for c in ctxs:
            rs = runs[(k, c)]
            if rs:
                tps = statistics.median(r["tokens_per_s"] for r in rs)
                rss = statistics.median(r["peak_rss_mb"] for r in rs)
                cells.append(f"{tps:,.0f} tok/s, {rss:,.0f} MB")
            elif (k, c) in skipped:
                cells.append(f"skipped (~{skipped[(k, c)]:.0f} s a step)")
            else:
                cells.append("")
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
