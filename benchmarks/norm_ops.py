"""Time the fused DyT op against LayerNorm, BatchNorm, the eager formula, torch.tanh and a copy.

    python benchmarks/norm_ops.py            # full run (~2 min on 2 cores), writes benchmarks/RESULTS.md
    python benchmarks/norm_ops.py --quick    # 3 rounds, no cold-build measurement

All candidates of one case run in the same process, alternating within every round (the machine
is shared, so only ratios taken side by side mean anything); each time is the median over rounds.
Every candidate allocates its output, as a layer does. Saved-for-backward bytes are counted with
``torch.autograd.graph.saved_tensors_hooks``. The targets are those of GitHub issue 7.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.common import RESULTS, machine, write_section  # noqa: E402
from dyt_lab.norms import DyT, cpu_kernel  # noqa: E402

# (label, measured key, limit): fused DyT against LayerNorm / tanh, ratios of median times.
TARGETS = [
    ("forward / LayerNorm", "fwd_ln", 1.2),
    ("forward+backward / LayerNorm", "both_ln", 1.5),
    ("forward / torch.tanh", "fwd_tanh", 1.3),
    ("saved bytes / LayerNorm", "saved_ln", 1.0),
]


def candidates(shape: tuple[int, ...], channels_last: bool, dtype: torch.dtype) -> dict:
    """name -> (callable, input): the ops compared on one tensor shape and dtype."""
    channels = shape[-1] if channels_last else shape[1]
    x = torch.randn(shape, dtype=dtype)
    # LayerNorm normalizes the channel dim, so feature maps get it on the same elements laid out
    # channels-last (N, H, W, C), as ConvNeXt does; BatchNorm2d takes them channels-first.
    x_tokens = x if channels_last else x.permute(0, 2, 3, 1).contiguous()
    ops = {
        "fused DyT": (DyT(channels, channels_last=channels_last, fused=True).to(dtype), x),
        "LayerNorm": (nn.LayerNorm(channels).to(dtype), x_tokens),
        "eager DyT (reference)": (DyT(channels, channels_last=channels_last, fused=False).to(dtype), x),
        "torch.tanh": (torch.tanh, x),
        "copy (clone)": (torch.clone, x),
    }
    if not channels_last:
        ops["BatchNorm2d"] = (nn.BatchNorm2d(channels).to(dtype), x)
    return ops


def saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward after one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


def time_case(ops: dict, rounds: int) -> dict:
    """name -> {'fwd': median s, 'both': median s, 'saved': bytes}, candidates interleaved per round."""
    names = list(ops)
    grads = {n: torch.randn_like(x) for n, (_, x) in ops.items()}
    times = {n: {"fwd": [], "both": []} for n in names}
    for r in range(rounds + 1):  # round 0 warms up and is dropped
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            fn, x = ops[name]
            with torch.no_grad():
                start = time.perf_counter()
                fn(x)
                fwd = time.perf_counter() - start
            leaf = x.detach().requires_grad_()
            start = time.perf_counter()
            fn(leaf).backward(grads[name])
            both = time.perf_counter() - start
            if r > 0:
                times[name]["fwd"].append(fwd)
                times[name]["both"].append(both)
            if isinstance(fn, nn.Module):
                fn.zero_grad(set_to_none=True)
    return {
        n: {"fwd": statistics.median(t["fwd"]), "both": statistics.median(t["both"]), "saved": saved_bytes(ops[n][0], ops[n][1])}
        for n, t in times.items()
    }


def cold_build_seconds() -> float | None:
    """Build the kernel from scratch in a fresh extension cache, in a child process."""
    with tempfile.TemporaryDirectory() as cache:
        code = "from dyt_lab.norms import cpu_kernel as k; r = k.unavailable_reason(); print(k.build_seconds() if r is None else -1)"
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": cache}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             cwd=Path(__file__).resolve().parents[1])
        value = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else -1
    return None if value < 0 else value


def report(cases: dict, header: list[str]) -> str:
    """Markdown: one timing table per case, then the targets with PASS/FAIL."""
    lines = [*header, ""]
    verdicts = []
    for case, res in cases.items():
        ln, tanh = res["LayerNorm"], res["torch.tanh"]
        lines += [f"#### {case}", "", "| op | forward ms | fwd+bwd ms | fwd / LN | fwd+bwd / LN | fwd / tanh | saved MB | saved / LN |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in res.items():
            lines.append(
                f"| {name} | {r['fwd'] * 1e3:.1f} | {r['both'] * 1e3:.1f} | {r['fwd'] / ln['fwd']:.2f} | "
                f"{r['both'] / ln['both']:.2f} | {r['fwd'] / tanh['fwd']:.2f} | {r['saved'] / 2**20:.1f} | "
                f"{r['saved'] / ln['saved']:.2f} |"
            )
        fused = res["fused DyT"]
        measured = {"fwd_ln": fused["fwd"] / ln["fwd"], "both_ln": fused["both"] / ln["both"],
                    "fwd_tanh": fused["fwd"] / tanh["fwd"], "saved_ln": fused["saved"] / ln["saved"]}
        for label, key, limit in TARGETS:
            verdicts.append(f"| {case} | {label} <= {limit} | {measured[key]:.2f} | "
                            f"{'PASS' if measured[key] <= limit else 'FAIL'} |")
        lines.append("")
    lines += ["#### Targets (fused DyT)", "", "| case | target | measured | result |", "|---|---|---:|---|", *verdicts]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables and write them into RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds per case and no cold build")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 9, quick 3)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    torch.set_num_threads(args.threads)

    load_average = os.getloadavg()[0]  # before our own work: how busy the (shared) machine was
    cold = None if args.quick else cold_build_seconds()
    start = time.perf_counter()
    reason = cpu_kernel.unavailable_reason()
    load = time.perf_counter() - start
    if reason is not None:
        print(f"warning: the C++ kernel is unavailable ({reason}); timing the pure-PyTorch fallback")

    shapes = {"tokens (256, 197, 384) channels-last": ((256, 197, 384), True),
              "feature map (64, 256, 28, 28) channels-first": ((64, 256, 28, 28), False)}
    cases = {}
    for dtype in (torch.float32, torch.bfloat16):
        for label, (shape, channels_last) in shapes.items():
            case = f"{label}, {str(dtype).replace('torch.', '')}"
            print(f"timing {case} ...", flush=True)
            cases[case] = time_case(candidates(shape, channels_last, dtype), rounds)

    build = f"cold build {cold:.1f} s (fresh cache, once per machine)" if cold is not None else "cold build not measured"
    header = [
        f"Command: `python benchmarks/norm_ops.py{' --quick' if args.quick else ''}`, {rounds} rounds, "
        f"median times, {time.strftime('%Y-%m-%d %H:%M')}.",
        f"Machine: {machine()}; load average {load_average:.1f} when the run started.",
        f"Kernel: {'C++ kernel' if reason is None else 'FALLBACK: ' + reason}; {build}; "
        f"first use in this process (load from cache) {load:.2f} s.",
        "bf16 cases: input and parameters bf16 (a model cast with `.to(torch.bfloat16)`). Feature-map "
        "LayerNorm: nn.LayerNorm(256) on the same elements laid out (N, H, W, C).",
    ]
    text = report(cases, header)
    print(text)
    if not args.no_write:
        write_section("norm_ops", "## norm_ops\n\n" + text)
        print(f"\nwrote the norm_ops section of {RESULTS}")


if __name__ == "__main__":
    main()
