"""`make perf`: our PGD against torchattacks' PGD and against the bare cost of the same gradient passes.

Same model, batch, budget (eps, steps, step size, random start); the variants are interleaved over several
rounds so that drifts in machine load hit them alike, and the medians are compared. Labels are the model's
own predictions, so every example starts correctly classified and the attack has work to do.

Targets (the spine issue): ours (full budget, no early stop) <= 1.05 x torchattacks and <= 1.15 x the bare
cost of `steps` forward+backward passes. Early stopping is reported beside it: it only removes work.
Exit code 1 if a target is missed. Results are also written to results/perf.json.

Precision (`eval.precision`): ours is also timed under autocast in each of `--precisions` (default: bf16 and
fp16 on CUDA, bf16 on the CPU, where fp16 autocast has few kernels), with the speed-up over fp32 and the share
of examples whose prediction on x_adv differs from fp32's (same random start). The targets apply to fp32 only;
the model keeps its default memory layout here (the executor adds channels_last under bf16/fp16 on CUDA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from attacks.pgd import PGD
from benchmark.runner.stages.attack import precision
from lightning_modules.classifier import build_classifier

SETUPS = {
    # name: (backbone, (C, H, W), batch): the default bench's model, and a CIFAR-size ResNet-18.
    "small_cnn": ("small_cnn", (1, 16, 16), 256),
    "resnet18_cifar": ("resnet18_cifar", (3, 32, 32), 32),
}


def bare_cost(model, x, y, steps: int) -> None:
    """`steps` forward passes and input-gradient backward passes, nothing else."""
    for _ in range(steps):
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)


def measure(name: str, steps: int, rounds: int, eps: float, seed: int = 0, precisions=(), device="cpu") -> dict:
    import torchattacks

    device = torch.device(device)
    backbone, shape, batch = SETUPS[name]
    torch.manual_seed(seed)
    model = build_classifier(backbone, 10, shape[0], [0.5] * shape[0], [0.5] * shape[0]).eval().to(device)
    x = torch.rand(batch, *shape, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example starts correctly classified
    alpha = 2.5 * eps / steps
    ours = PGD(eps, steps=steps, step_size=alpha, early_stop=False)
    ours_es = PGD(eps, steps=steps, step_size=alpha, early_stop=True)
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)

    def frozen_bare():
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        bare_cost(model, x, y, steps)
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)

    def autocast(prec: str):
        def attack():
            torch.manual_seed(seed)
            with precision(model, device, prec):
                return ours(model, x, y)

        return attack

    variants = {
        "torchattacks": lambda: ta(x, y),
        "ours": lambda: ours(model, x, y),
        "ours_early_stop": lambda: ours_es(model, x, y),
        "bare": frozen_bare,
        **{f"ours_{p}": autocast(p) for p in precisions},
    }
    for fn in variants.values():  # warm-up (allocator, first-call costs)
        fn()
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    reference = autocast("fp32")()
    with torch.no_grad():
        ref_pred = model(reference).argmax(1)
        changed = {p: float((model(autocast(p)()).argmax(1) != ref_pred).float().mean()) for p in precisions}
    return {
        "device": str(device),
        "precisions": {
            p: {"seconds": med[f"ours_{p}"], "speedup_over_fp32": med["ours"] / med[f"ours_{p}"], "changed": changed[p]}
            for p in precisions
        },
        "setup": name,
        "batch": batch,
        "shape": shape,
        "steps": steps,
        "eps": eps,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "median_seconds": med,
        "ours_over_torchattacks": med["ours"] / med["torchattacks"],
        "ours_over_bare": med["ours"] / med["bare"],
        "early_stop_over_torchattacks": med["ours_early_stop"] / med["torchattacks"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--out", default="results/perf.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precisions", nargs="*", choices=("bf16", "fp16"), default=None, help="autocast precisions")
    args = p.parse_args(argv)
    if args.precisions is None:
        args.precisions = ["bf16", "fp16"] if args.device.startswith("cuda") else ["bf16"]

    results = [measure(s, args.steps, args.rounds, args.eps, 0, args.precisions, args.device) for s in args.setups]
    table = Table(title=f"PGD-{args.steps}, L-inf eps {args.eps:.4f}, median of {args.rounds} interleaved rounds")
    for col in ("setup", "torchattacks s", "ours s", "ours+early stop s", "bare s", "ours/TA", "ours/bare", "ok"):
        table.add_column(col)
    ok_all = True
    for r in results:
        m = r["median_seconds"]
        ok = r["ours_over_torchattacks"] <= 1.05 and r["ours_over_bare"] <= 1.15
        ok_all &= ok
        table.add_row(
            f"{r['setup']} (batch {r['batch']})",
            f"{m['torchattacks']:.3f}",
            f"{m['ours']:.3f}",
            f"{m['ours_early_stop']:.3f}",
            f"{m['bare']:.3f}",
            f"{r['ours_over_torchattacks']:.3f}",
            f"{r['ours_over_bare']:.3f}",
            "yes" if ok else "NO",
        )
    Console(width=120).print(table)
    print("targets: ours/TA <= 1.05 and ours/bare <= 1.15 (ours = full budget, no early stop)")
    prec = Table(title=f"ours under autocast on {args.device} (eval.precision): no target, for information")
    for col in ("setup", "precision", "ours s", "speed-up over fp32", "x_adv predictions that differ from fp32"):
        prec.add_column(col)
    for r in results:
        prec.add_row(f"{r['setup']} (batch {r['batch']})", "fp32", f"{r['median_seconds']['ours']:.3f}", "1.00", "-")
        for name, v in r["precisions"].items():
            prec.add_row("", name, f"{v['seconds']:.3f}", f"{v['speedup_over_fp32']:.2f}", f"{v['changed']:.1%}")
    Console(width=120).print(prec)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
