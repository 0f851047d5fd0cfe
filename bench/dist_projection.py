#!/usr/bin/env python3
"""bench/dist_projection.py: projected data-parallel scaling on a cluster, from the ring all-reduce formula.

A step of data-parallel training on K ranks all-reduces the gradient: N = 4 x parameters bytes.
A ring all-reduce (reduce-scatter, then all-gather) sends 2 (K - 1) messages of N / K bytes
from every rank, one after another:

    T(K) = buckets x 2 (K - 1) alpha + 2 (K - 1) / K x N / B

alpha is the latency of one message, B the link bandwidth in bytes/s, and every bucket
(--bucket-mb, the trainer's flag) is its own all-reduce, so it pays the latency term again. Each rank keeps its own
batch (weak scaling: the global batch grows with K), so its compute per step t stays the same.
Scaling efficiency is t / (t + exposed communication): all of T without overlap, and
max(0, T - backward) with it, taking backward as 2/3 of the step (an upper bound: it assumes
MPI moves every bucket while backward runs; see docs/distributed.md for what was measured).
--speedup divides the compute per step, for nodes faster than this one.

The defaults are this repository's measurements on its 2-core machine (docs/distributed.md):
alpha from `mpirun -np 2 --mca btl tcp,self charlm_bench allreduce` (a 4 KB all-reduce, 2 messages
on 2 ranks), t from `bench/dist_scaling.py` (one machine per rank, 2 threads). A 100M-parameter
model is projected at 9.35x the 10.7M model's FLOPs per token, at the same tokens per rank.

Usage: python3 bench/dist_projection.py [--alpha-us 12] [--t-small 0.0265] [--t-10m 1.53] [--bucket-mb 1]
                                        [--speedup 1]
"""
import argparse

MODELS = [  # name, parameters
    ("0.8M (baseline)", 0.81e6),
    ("10.7M", 10.7e6),
    ("100M", 100e6),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alpha-us", type=float, default=12.0, help="latency per message, microseconds")
    ap.add_argument("--t-small", type=float, default=0.0265, help="0.8M model: seconds per step per rank")
    ap.add_argument("--t-10m", type=float, default=1.53, help="10.7M model: seconds per step per rank")
    ap.add_argument("--bucket-mb", type=float, default=1.0)
    ap.add_argument("--speedup", type=float, default=1.0, help="compute per step divided by this")
    ap.add_argument("--ranks", default="8,64,512")
    ap.add_argument("--gbits", default="10,25,100")
    args = ap.parse_args()
    alpha = args.alpha_us * 1e-6
    step = {"0.8M (baseline)": args.t_small, "10.7M": args.t_10m, "100M": args.t_10m * 100e6 / 10.7e6}
    step = {m: t / args.speedup for m, t in step.items()}
    ranks = [int(k) for k in args.ranks.split(",")]
    print(f"alpha = {args.alpha_us:g} us per message; buckets of {args.bucket_mb:g} MB; compute per step per rank: "
          + ", ".join(f"{m} {step[m]:.3g} s" for m, _ in MODELS) + "\n")
    print("| model | bytes per step | link | " + " | ".join(f"K = {k}: T, efficiency (overlap)" for k in ranks) + " |")
    print("|---|---|---|" + "---|" * len(ranks))
    for name, params in MODELS:
        n = 4 * params
        t = step[name]
        buckets = max(1, -(-n // (args.bucket_mb * 1024 * 1024)))
        for gbit in (float(g) for g in args.gbits.split(",")):
            bandwidth = gbit * 1e9 / 8
            cells = []
            for k in ranks:
                comm = buckets * 2 * (k - 1) * alpha + 2 * (k - 1) / k * n / bandwidth
                plain = t / (t + comm)
                overlapped = t / (t + max(0.0, comm - 2 * t / 3))
                cells.append(f"{comm * 1e3:,.1f} ms, {100 * plain:.0f}% ({100 * overlapped:.0f}%)")
            print(f"| {name} | {n / 1e6:,.1f} MB | {gbit:g} Gb/s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
