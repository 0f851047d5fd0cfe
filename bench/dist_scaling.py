#!/usr/bin/env python3
"""bench/dist_scaling.py: one process against several MPI ranks on this machine, side by side in one run.

For each config, trains with `charlm train` in rounds that interleave the variants (so a slow
spell of a shared machine hits all of them alike) and prints, per variant, the median over
rounds of each run's median step time, the tokens/s that gives, the ratio to one process, and
the time per step spent waiting on communication (from the run's --json):

  1 process x N threads                        charlm train --threads N
  N ranks x 1 thread, shared memory            mpirun --bind-to core -np N charlm train --threads 1
  N ranks x 1 thread, TCP over loopback        ... --mca btl tcp,self (the path between machines)
  the same two with --no-overlap               every bucket all-reduced after backward

With --no-overlap the wait is the whole all-reduce (plus any skew between the ranks); with the
overlap it is the part that backward did not hide.

Usage: python3 bench/dist_scaling.py --data PATH [--bin build/charlm] [--ranks 2] [--rounds 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from compare_pytorch import cpu_name  # the same machine line as the PyTorch comparison

CONFIGS = {
    "baseline": dict(layers=4, heads=4, dim=128, ctx=64, batch=12, steps=150),
    "10.7M": dict(layers=6, heads=6, dim=384, ctx=256, batch=16, steps=12),
}

ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def variants(ranks):
    mpi = ["mpirun", "--bind-to", "core", "-np", str(ranks)]
    tcp = mpi + ["--mca", "btl", "tcp,self"]
    return [
        (f"1 process x {ranks} threads", [], ["--threads", str(ranks)]),
        (f"{ranks} ranks x 1 thread, shared memory", mpi, ["--threads", "1"]),
        (f"{ranks} ranks x 1 thread, TCP loopback", tcp, ["--threads", "1"]),
        (f"{ranks} ranks, shared memory, --no-overlap", mpi, ["--threads", "1", "--no-overlap"]),
        (f"{ranks} ranks, TCP loopback, --no-overlap", tcp, ["--threads", "1", "--no-overlap"]),
    ]


def run(binary, data, config, launcher, extra, workdir, tag):
    c = CONFIGS[config]
    out = os.path.join(workdir, tag)
    cmd = launcher + [binary, "train", "--data", data, "--out", out, "--json",
                      "--layers", str(c["layers"]), "--heads", str(c["heads"]), "--dim", str(c["dim"]),
                      "--ctx", str(c["ctx"]), "--batch", str(c["batch"]), "--steps", str(c["steps"]),
                      "--eval-every", str(c["steps"]), "--eval-batches", "1", "--split", "0.98,0.01,0.01"] + extra
    env = dict(os.environ, **ROOT_ENV)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    j = json.loads(p.stdout[p.stdout.rindex("{"):])
    subprocess.run(["rm", "-rf", out])
    return j


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--bin", default="build/charlm")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default="baseline,10.7M")
    args = ap.parse_args()

    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores. OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}.")
    print(f"Each row: the median over {args.rounds} rounds of each run's median step; rounds interleave the variants.\n")
    print("| config | variant | ms/step | tokens/s | vs 1 process | comm wait ms/step |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="dist-scaling-") as workdir:
        for config in args.configs.split(","):
            vs = variants(args.ranks)
            results = {name: [] for name, _, _ in vs}
            for r in range(args.rounds):
                for i, (name, launcher, extra) in enumerate(vs):
                    results[name].append(run(args.bin, args.data, config, launcher, extra, workdir, f"{config}-{i}-{r}"))
                    print(f"  [{config} round {r + 1}: {name}: {results[name][-1]['step_ms_median']:.1f} ms]",
                          file=sys.stderr)
            c = CONFIGS[config]
            single = statistics.median(j["step_ms_median"] for j in results[vs[0][0]])
            for name, _, _ in vs:
                ms = statistics.median(j["step_ms_median"] for j in results[name])
                comm = statistics.median(j["comm_ms_per_step"] for j in results[name])
                tokens = c["batch"] * c["ctx"] / (ms / 1e3)
                print(f"| {config} | {name} | {ms:.1f} | {tokens:,.0f} | {single / ms:.2f}x | "
                      f"{'-' if name.startswith('1 process') else f'{comm:.2f}'} |", flush=True)


if __name__ == "__main__":
    main()
