#!/usr/bin/env python3
"""bench/compare_pytorch.py: training speed of latentgrad against PyTorch on this CPU, side by side in one run.

For each config and attention kind, trains the same model (same shapes, init scheme,
data, AdamW) for a few steps in each engine at 1 and 2 threads, each in a fresh
process, and prints the median step time, tokens/s, peak RSS and the ratio of the
best latentgrad figure to the best PyTorch figure as a Markdown table.

PyTorch runs twice per thread count: as installed, and with the OpenMP build of OpenBLAS
in front of the library path (Debian's libopenblas-openmp-dev, which latentgrad links). Debian's
PyTorch takes its BLAS from the system's libblas alternative, by default the pthreads build,
whose threads spin against PyTorch's OpenMP threads: at 2 threads that run is several times
slower than with the OpenMP build. The ratio uses PyTorch's best run of all.

--precision fp32,bf16 runs each engine in both precisions: latentgrad with --precision bf16 (its own
bf16 GEMM), PyTorch under torch.autocast("cpu", dtype=torch.bfloat16) (oneDNN's bf16 kernels).
--blas pinned,unpinned runs every engine twice more: with OpenBLAS pinned to its Haswell (AVX2) kernels
(OPENBLAS_CORETYPE=Haswell, as this project's test environment sets it) and unpinned (OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE removed: OpenBLAS picks the kernels of the CPU it finds, as on a user's machine).
Without --blas the environment is left as it is.

MFU is the model's FLOP rate (as latentgrad counts it: 6 x parameters x tokens plus attention) over
the hardware's peak: one core's register-only peak times the threads (charlm_bench peak), the fp32
FMA peak for fp32 runs and the bf16 dot peak for bf16 runs. "of sgemm" divides by the sgemm rate of
the OpenBLAS kernels in use instead (latentgrad's runs measure it).

PyTorch is optional (Debian: apt-get install python3-torch); run with /usr/bin/python3.
Usage: /usr/bin/python3 bench/compare_pytorch.py --data PATH [--bin build/charlm_bench] [--ffn swiglu --norm rmsnorm]
       [--precision fp32,bf16] [--blas pinned,unpinned] [--torch-blas installed,openmp]
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# Debian's OpenMP build of OpenBLAS (libopenblas-openmp-dev): libblas.so.3 and libopenblas.so.0.
OPENMP_BLAS_DIR = "/usr/lib/x86_64-linux-gnu/openblas-openmp"

CONFIGS = {
    "baseline": dict(layers=4, heads=4, dim=128, ctx=64, batch=12),
    "10.7M": dict(layers=6, heads=6, dim=384, ctx=256, batch=16),
}


def config_of(name):
    """A named config, or ctxN: the baseline model on one sequence of N characters (long context)."""
    if name in CONFIGS:
        return CONFIGS[name]
    if name.startswith("ctx") and name[3:].isdigit():
        return dict(CONFIGS["baseline"], ctx=int(name[3:]), batch=1)
    sys.exit(f"unknown config '{name}' (known: {', '.join(CONFIGS)}, or ctxN)")


def is_large(name):
    """Configs whose steps take seconds: timed for --steps-large steps after 1 warm-up, in --rounds-large rounds."""
    return name == "10.7M" or name.startswith("ctx")


def torch_worker(args):
    """Runs inside a fresh process: trains the PyTorch model and prints one JSON line."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_model import CharLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = open(args.data, "rb").read()
    vocab = sorted(set(data))
    index = {b: i + 1 for i, b in enumerate(vocab)}  # id 0: the unknown byte, as in latentgrad
    tokens = torch.tensor([index[b] for b in data], dtype=torch.long)
    cfg = dict(config_of(args.config), vocab=len(vocab) + 1, attn=args.attn, latents=16, window=16,
               chunk=args.chunk, ffn=args.ffn, norm=args.norm)
    model = CharLM(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    B, T = cfg["batch"], cfg["ctx"]
    gen = torch.Generator().manual_seed(args.seed)
    times = []
    for step in range(args.warmup + args.steps):
        starts = torch.randint(0, len(tokens) - T - 1, (B,), generator=gen)
        x = torch.stack([tokens[s:s + T] for s in starts])
        y = torch.stack([tokens[s + 1:s + T + 1] for s in starts])
        t0 = time.perf_counter()
        if args.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(json.dumps({
        "step_ms": median * 1e3,
        "tokens_per_s": B * T / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": sum(p.numel() for p in model.parameters()),
        "loss": float(loss),
    }))


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="text corpus to draw batches from")
    ap.add_argument("--bin", default="build/charlm_bench", help="latentgrad's benchmark program")
    ap.add_argument("--configs", default="baseline,10.7M",
                    help="comma list of: " + ",".join(CONFIGS) + ", ctxN (the baseline model, batch 1, ctx N)")
    ap.add_argument("--attn", default="mha,latent", help="comma list of attention kinds")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run (median reported)")
    ap.add_argument("--steps-large", type=int, default=3, help="timed steps for the 10.7M config (seconds each)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every run (baseline config)")
    ap.add_argument("--rounds-large", dest="rounds_large", type=int, default=1,
                    help="interleaved repetitions of every run of the 10.7M and ctxN configs (each step takes "
                         "seconds; on a shared machine 3 make their rows much steadier than 1)")
    ap.add_argument("--ffn", default="gelu", help="feed-forward kind of both models: gelu | swiglu")
    ap.add_argument("--norm", default="layernorm", help="norm kind of both models: layernorm | rmsnorm")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32", help="comma list of: fp32, bf16 (PyTorch: autocast)")
    ap.add_argument("--blas", default="env", help="comma list of: pinned, unpinned (OpenBLAS's kernels), "
                    "env (the environment as it is)")
    ap.add_argument("--torch-blas", dest="torch_blas", default="installed,openmp",
                    help="comma list of PyTorch's BLAS builds to run: installed, openmp")
    ap.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--attn-one", dest="attn_one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 1 or args.rounds_large < 1:
        sys.exit("--rounds and --rounds-large: at least 1")
    if args.worker:
        args.threads = int(args.threads)
        args.attn = args.attn_one
        return torch_worker(args)

    # Asked in a child process: a parent that imported torch would pass its resident size on to
    # every child it forks (Linux keeps ru_maxrss across fork + exec), inflating their peak RSS.
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit("PyTorch is not installed (Debian: apt-get install python3-torch; run with /usr/bin/python3)")
    torch_version = probe.stdout.strip()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: build first (bash scripts/test.sh)")

    # Each --blas mode: the environment it sets (None: removes), its table label, its description.
    pins = {
        "env": ({}, "as set",
                f"as the environment sets it (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})"),
        "pinned": ({"OPENBLAS_CORETYPE": "Haswell"}, "pinned", "pinned to OpenBLAS's Haswell kernels"),
        "unpinned": ({"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}, "unpinned",
                     "unpinned (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed)"),
    }
    blas_modes = args.blas.split(",")
    for mode in blas_modes:
        if mode not in pins:
            sys.exit(f"--blas: unknown mode '{mode}' (known: pinned, unpinned, env)")
    precisions = args.precision.split(",")
    for p in precisions:
        if p not in ("fp32", "bf16"):
            sys.exit(f"--precision: unknown precision '{p}' (known: fp32, bf16)")
    torch_blas = []
    for kind in args.torch_blas.split(","):
        if kind == "installed":
            torch_blas.append(("pytorch", {}))
        elif kind == "openmp":
            if os.path.isdir(OPENMP_BLAS_DIR):
                path = ":".join(p for p in (OPENMP_BLAS_DIR, os.environ.get("LD_LIBRARY_PATH", "")) if p)
                torch_blas.append(("pytorch, OpenMP OpenBLAS", {"LD_LIBRARY_PATH": path}))
        else:
            sys.exit(f"--torch-blas: unknown kind '{kind}' (known: installed, openmp)")
    if not torch_blas:
        sys.exit("--torch-blas: no PyTorch BLAS left to run (the OpenMP build is not installed?)")

    def environment(extra, mode, threads):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), **extra)
        for name, value in pins[mode][0].items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores; PyTorch {torch_version}. Each row: the median "
          f"over {args.rounds} rounds ({args.rounds_large} for 10.7M and ctxN) of each run's median step; a run times {args.steps} steps "
          f"after {args.warmup} warm-up ({args.steps_large} after 1 for 10.7M and ctxN). Rounds interleave the runs, so "
          f"a slow spell of a shared machine hits every engine alike. BLAS: "
          + ", ".join(pins[m][2] for m in blas_modes)
          + "."
          + (f" Feed-forward {args.ffn}, norm {args.norm}." if (args.ffn, args.norm) != ("gelu", "layernorm") else "")
          + "\n")
    print("| config | attention | engine | BLAS | precision | threads | ms/step | tokens/s | MFU | of sgemm | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    for config in args.configs.split(","):
        for attn in args.attn.split(","):
            steps, warmup = (args.steps_large, 1) if is_large(config) else (args.steps, args.warmup)
            rounds = args.rounds_large if is_large(config) else args.rounds
            runs = [("latentgrad", "latentgrad", {})] + [("pytorch", label, extra) for label, extra in torch_blas]
            cells = [(engine, label, extra, mode, precision, int(t))
                     for engine, label, extra in runs for mode in blas_modes for precision in precisions
                     for t in args.threads.split(",")]
            results = {i: [] for i in range(len(cells))}
            for _ in range(rounds):
                for i, (engine, label, extra, mode, precision, threads) in enumerate(cells):
                    env = environment(extra, mode, threads)
                    if engine == "pytorch":
                        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "torch", "--data", args.data,
                               "--config", config, "--attn-one", attn, "--threads", str(threads),
                               "--steps", str(steps), "--warmup", str(warmup),
                               "--chunk", str(args.chunk), "--seed", str(args.seed),
                               "--ffn", args.ffn, "--norm", args.norm, "--precision", precision]
                    else:
                        c = config_of(config)
                        cmd = [args.bin, "train", "--data", args.data, "--attn", attn, "--threads", str(threads),
                               "--layers", str(c["layers"]), "--heads", str(c["heads"]), "--dim", str(c["dim"]),
                               "--ctx", str(c["ctx"]), "--batch", str(c["batch"]), "--steps", str(steps),
                               "--warmup", str(warmup), "--chunk", str(args.chunk), "--seed", str(args.seed),
                               "--json"]
                        if precision != "fp32":
                            cmd += ["--precision", precision]
                        if (args.ffn, args.norm) != ("gelu", "layernorm"):
                            cmd += ["--ffn", args.ffn, "--norm", args.norm]
                    try:
                        results[i].append(run_json(cmd, env))
                    except RuntimeError as e:  # e.g. PyTorch's T x T scores at a long ctx: out of memory
                        if engine != "pytorch":
                            raise
                        print(e, file=sys.stderr)
                        results[i].append(None)
                params = {engine: results[i][0]["params"] for i, (engine, *_) in enumerate(cells)
                          if results[i][0] is not None}
                if len(set(params.values())) != 1:  # e.g. a latentgrad binary that ignores --ffn or --norm
                    sys.exit(f"the engines built different models ({config}, {attn}, ffn {args.ffn}, norm "
                             f"{args.norm}): " + ", ".join(f"{e} {n:,} parameters" for e, n in params.items()))
            # The model's FLOPs per token and the hardware's peak per thread, from latentgrad's runs.
            flops_per_token, core_peak = None, {}
            for i, (engine, label, extra, mode, precision, threads) in enumerate(cells):
                for r in results[i]:
                    if engine == "latentgrad":
                        flops_per_token = r["model_gflops"] * 1e9 / r["tokens_per_s"]
                        if r.get("hw_peak_gflops"):
                            core_peak.setdefault(precision, []).append(r["hw_peak_gflops"] / r["threads"])
            core_peak = {p: statistics.median(v) for p, v in core_peak.items()}
            best = {}
            for i, (engine, label, extra, mode, precision, threads) in enumerate(cells):
                rs = [r for r in results[i] if r is not None]
                blas = pins[mode][1]
                if engine == "latentgrad" and rs:
                    blas += f" ({rs[0].get('blas_core', '?')})"
                head = f"| {config} | {attn} | {label} | {blas} | {precision} | {threads} |"
                if not rs:
                    print(f"{head} failed (out of memory?) | | | | |", flush=True)
                    continue
                step_ms = statistics.median(r["step_ms"] for r in rs)
                tokens_per_s = statistics.median(r["tokens_per_s"] for r in rs)
                rss = max(r["peak_rss_mb"] for r in rs)
                key = (engine, mode, precision)
                best[key] = max(best.get(key, 0), tokens_per_s)
                mfu = "-"
                if flops_per_token and precision in core_peak:
                    mfu = f"{100 * flops_per_token * tokens_per_s / (core_peak[precision] * 1e9 * threads):.0f}%"
                of_sgemm = f"{100 * statistics.median(r['mfu'] for r in rs):.0f}%" if "mfu" in rs[0] else "-"
                print(f"{head} {step_ms:.1f} | {tokens_per_s:.0f} | {mfu} | {of_sgemm} | {rss:.0f} |", flush=True)
            summary.append((config, attn, best))

    # The ratios, each from the best thread count (and, for PyTorch, the best BLAS build) of its runs.
    print("\n| config | attention | BLAS | latentgrad bf16 / fp32 | PyTorch bf16 / fp32 | latentgrad / PyTorch, fp32 "
          "| latentgrad / PyTorch, bf16 |")
    print("|---|---|---|---|---|---|---|")

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    for config, attn, best in summary:
        for mode in blas_modes:
            g = {p: best.get(("latentgrad", mode, p)) for p in ("fp32", "bf16")}
            t = {p: best.get(("pytorch", mode, p)) for p in ("fp32", "bf16")}
            print(f"| {config} | {attn} | {mode} | {ratio(g['bf16'], g['fp32'])} | {ratio(t['bf16'], t['fp32'])} | "
                  f"{ratio(g['fp32'], t['fp32'])} | {ratio(g['bf16'], t['bf16'])} |")


if __name__ == "__main__":
    main()
