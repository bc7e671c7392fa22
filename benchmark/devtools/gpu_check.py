"""`make gpu-check`: what a person with a GPU runs once (under 10 minutes) to check the suite on it; a JSON report.

1. `precision`: PGD-10 (L-inf 8/255) under fp32 and bf16 autocast (`eval.precision`, the executor's `precision`
   context) on ResNet-18 at 32 px (`resnet18_cifar`) and ViT-S/16 at 224 px (`vit_small_patch16_224`), random
   weights and inputs, labels = the model's own clean predictions: median time of `--rounds` runs, robust accuracy
   (share still predicted as on the clean input), and the share of x_adv predictions bf16 changes;
2. `batch_size_auto`: the batch size `eval.batch_size=auto` picks for each model (the executor's search; off CUDA
   its fixed CPU size);
3. `ddp`: a training stage under `trainer=ddp` on every GPU (`trainer.devices` = their count; 2 gloo processes on
   the CPU): the embedded digits experiment, one teacher and one student, one epoch each;
4. `workers`: the same small sweep with `launcher=workers`, one worker per GPU (2 on the CPU).

`--device cpu --tiny` runs it all on the CPU at toy sizes (the test does). Nothing here is a target; the report
says what ran, where, and how long it took. Written to results/gpu_check.json (`--out`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attacks.pgd import PGD
from benchmark.runner.execute import AUTO_BATCH_CPU, AUTO_BATCH_START, cuda_fits, find_batch_size
from benchmark.runner.stages.attack import precision
from lightning_modules.classifier import build_classifier

#: name: (backbone, image side, batch, timm kwargs); `--tiny`: the CPU test's sizes.
SETUPS = {
    "resnet18_32px": ("resnet18_cifar", 32, 256, {}),
    "vit_s16_224px": ("vit_small_patch16_224", 224, 64, {}),
}
TINY = {
    "resnet18_32px": ("resnet18_cifar", 32, 4, {}),
    "vit_s16_224px": ("vit_tiny_patch16_224", 32, 4, {"img_size": 32, "patch_size": 16}),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attack_precision(name: str, setup: tuple, device: torch.device, rounds: int, steps: int) -> dict:
    backbone, side, batch, kwargs = setup
    torch.manual_seed(0)
    model = build_classifier(backbone, 10, 3, [0.5] * 3, [0.5] * 3, **kwargs).eval().to(device)
    x = torch.rand(batch, 3, side, side, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = PGD(8 / 255, steps=steps, step_size=2.5 * (8 / 255) / steps, early_stop=False)
    out = {"backbone": backbone, "side": side, "batch": batch, "steps": steps}
    preds = {}
    for prec in ("fp32", "bf16"):
        times = []
        for r in range(rounds + 1):  # the first run warms up (allocator, kernels) and is not timed
            torch.manual_seed(1)
            _sync(device)
            start = time.perf_counter()
            with precision(model, device, prec):
                x_adv = attack(model, x, y)
            _sync(device)
            if r:
                times.append(time.perf_counter() - start)
        with torch.no_grad():
            preds[prec] = model(x_adv).argmax(1)
        robust = float((preds[prec] == y).float().mean())
        out[prec] = {"seconds": statistics.median(times), "robust_acc": robust}
    out["bf16"]["changed_predictions"] = float((preds["bf16"] != preds["fp32"]).float().mean())
    out["bf16"]["speedup_over_fp32"] = out["fp32"]["seconds"] / out["bf16"]["seconds"]
    out["batch_size_auto"] = auto_batch(model, x, device)
    return out


def auto_batch(model, x, device: torch.device) -> dict:
    """What `eval.batch_size=auto` picks for this model (per precision), as the executor searches it."""
    if device.type != "cuda":
        return {"fp32": AUTO_BATCH_CPU, "bf16": AUTO_BATCH_CPU, "note": "off CUDA: the fixed CPU size"}
    limit = 4096
    return {p: find_batch_size(cuda_fits(model, x, device, p), AUTO_BATCH_START, limit) for p in ("fp32", "bf16")}


def sweep(kind: str, devices: int, tiny: bool, folder: Path) -> dict:
    """A small digits sweep in a subprocess: `ddp` (trainer=ddp on every device) or `workers` (one per device)."""
    over = [
        "experiment=digits", "logger=none", "progress=false", "seeds=[0]", "defense=[finetune]", "attack=[pgd_linf]",
        "eval.batch_size=auto", "teacher.trainer.max_epochs=1", "defense.finetune.trainer.max_epochs=1",
        f"eval.n_examples={16 if tiny else 512}", f"cache_dir={folder / kind / 'cache'}",
        f"results_dir={folder / kind / 'results'}",
    ]  # fmt: skip
    if tiny:
        over += ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]
    if kind == "ddp":
        over += ["trainer=ddp", f"trainer.devices={devices}", "launcher=inline"]
    else:
        over += ["launcher=workers", f"launcher.workers={devices}"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmark.run", *over], capture_output=True, text=True)
    rows = folder / kind / "results" / "results.csv"
    metas = [p for k in ("teacher", "student") for p in (folder / kind / "cache" / k).glob("*/meta.json")]
    trained = [json.loads(p.read_text()) for p in metas]
    return {
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "devices": devices,
        "rows": max(0, len(rows.read_text().splitlines()) - 1) if rows.is_file() else 0,
        "trained": [{"kind": m.get("kind"), "name": m.get("name"), "world_size": m.get("world_size")} for m in trained],
        "error": (proc.stderr.strip().splitlines() or [""])[-1] if proc.returncode else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (the CPU test)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--parts", nargs="+", default=["precision", "ddp", "workers"])
    parser.add_argument("--out", default="results/gpu_check.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus": gpus,
        "torch": torch.__version__,
        "tiny": args.tiny,
    }
    if "precision" in args.parts:
        setups = TINY if args.tiny else SETUPS
        report["precision"] = {n: attack_precision(n, s, device, args.rounds, args.steps) for n, s in setups.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("ddp", "workers"):
            if kind in args.parts:
                report[kind] = sweep(kind, gpus or 2, args.tiny, Path(tmp))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    failed = [k for k in ("ddp", "workers") if k in report and report[k]["returncode"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
