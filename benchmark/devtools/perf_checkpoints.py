"""`make perf-checkpoints`: load time and matched tensors of a public checkpoint in each format the loader reads.

Each file is written in its project's real key layout with random weights (`benchmark.devtools.checkpoint_layouts`, no
network) and loaded into the suite's classifier for a 10-class target with `lightning_modules.checkpoints` (format
`auto`: detection included in the time). The median of `--repeats` loads is reported (reading the file, detection,
`load_state_dict`; not the model's construction). Written to results/perf_checkpoints.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmark.devtools import checkpoint_layouts as layouts
from lightning_modules.checkpoints import load_into
from lightning_modules.classifier import build_classifier

#: name: (how the file is written, the suite's backbone it is loaded into, its kwargs)
CASES = {
    "torchvision resnet18 (ImageNet head)": (lambda p: layouts.torchvision_file(p), "resnet18", {}),
    "timm vit_small_patch16_224 (ImageNet head)": (
        lambda p: layouts.timm_file(p, "vit_small_patch16_224"),
        "vit_small_patch16_224",
        {},
    ),
    "timm vit_small_patch16_224, encoder only": (
        lambda p: layouts.timm_file(p, "vit_small_patch16_224", num_classes=0),
        "vit_small_patch16_224",
        {},
    ),
    "DeiT {'model': ...} resnet50": (lambda p: layouts.timm_file(p, "resnet50", wrapper="model"), "resnet50", {}),
    "MoCo v2 official (DDP, encoder_q)": (layouts.moco_file, "resnet18", {}),
    "solo-learn Lightning ckpt (CIFAR ResNet-18)": (lambda p: layouts.solo_learn_file(p), "resnet18_cifar", {}),
    "lightly example Lightning ckpt (Sequential)": (lambda p: layouts.lightly_file(p), "resnet18", {}),
}


def measure(name: str, write, backbone: str, kwargs: dict, folder: Path, repeats: int) -> dict:
    path = write(folder / f"{len(list(folder.iterdir()))}.pt")
    times, report = [], None
    for _ in range(repeats):
        model = build_classifier(backbone, 10, 3, (0.5,) * 3, (0.25,) * 3, **kwargs)
        start = time.perf_counter()
        report = load_into(model, str(path))
        times.append(time.perf_counter() - start)
    return {
        "case": name,
        "backbone": backbone,
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "format": report.format,
        "matched": report.matched,
        "backbone_tensors": report.backbone_total,
        "head": report.head,
        "unmatched": len(report.unmatched),
        "load_s": round(statistics.median(times), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/perf_checkpoints.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (write, backbone, kwargs) in CASES.items():
            rows.append(measure(name, write, backbone, kwargs, Path(tmp), args.repeats))
            r = rows[-1]
            print(
                f"{name:46s} {r['file_mb']:7.1f} MB  {r['format']:18s} {r['matched']:4d}/{r['backbone_tensors']:<4d} "
                f"unmatched {r['unmatched']:4d}  {r['load_s']:.3f} s  head {r['head']}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
