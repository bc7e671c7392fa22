"""Choose an experiment's transfer attacks on the validation split:
`python -m benchmark.devtools.choose_transfer [overrides] --defenses finetune,freeze,...
--attacks transfer_pgd_linf,transfer_mi_fgsm@substitute,...`.

Each victim defense is trained (cached like any stage) and attacked on the target domain's **validation** split at
the headline budget by every transfer attack listed, each crafted once on its surrogate (`name@surrogate` crafts the
config `name` on another surrogate: `teacher`, `substitute`, `probe`, or an ensemble `teacher+substitute`; see
`attacks.transfer`). The test split is never read. Reported: each attack's validation robust accuracy per defense,
the per-example worst case over all of them, and a greedy choice of attacks for the sweep: starting from
`transfer_pgd_linf` (the attack the suite had), each step adds the attack that lowers the mean over the defenses of
the per-example worst case the most, until no attack lowers it by at least `--min-gain` points (default 0.5). Each
step is shown with its gain, so that which family wins where, and by how much over PGD-transfer, is read off the
table.

Writes `results/<experiment>/tuning/transfer.md` and `.json`, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from attacks.errors import ConfigError
from benchmark.devtools.tune import validation_robustness
from benchmark.runner.config import compose

BASELINE = "transfer_pgd_linf"
MIN_GAIN = 0.005


def _variants(attacks: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Surrogate -> [(shown name, config name)] of the attacks crafted on it ("" keeps each config's own)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for a in attacks:
        name, _, surrogate = a.partition("@")
        out.setdefault(surrogate, []).append((a, name))
    return out


def outcomes(overrides: list[str], defenses: list[str], attacks: list[str]) -> tuple[dict, int, str]:
    """defense -> attack -> per-example validation robust outcomes; the number of validation examples; the results
    folder of the experiment."""
    found: dict[str, dict[str, np.ndarray]] = {d: {} for d in defenses}
    n, where = 0, "results"
    for surrogate, names in _variants(attacks).items():
        configs = [c for _, c in names]
        chosen = [f"attack=[{','.join(configs)}]", "logger=none", "seeds=[0]"]
        if surrogate:
            chosen += [f"attack.{c}.attack.surrogate=[{surrogate.replace('+', ',')}]" for c in configs]
        crafted: dict = {}  # crafted once per attack, scored on every defense
        for d in defenses:
            cfg = compose([*overrides, *chosen, f"defense=[{d}]"])
            where = cfg["results_dir"].split("/sweeps/")[0]
            result = validation_robustness(cfg, configs, crafted)
            n = result["n_val"]
            for shown, config in names:
                found[d][shown] = np.asarray(result["per_example"][config], float)
    return found, n, where


def greedy(found: dict, attacks: list[str], min_gain: float = MIN_GAIN) -> list[dict]:
    """Attacks in the order they lower the mean worst case most, from the baseline (see the module docstring)."""

    def worst(chosen: list[str]) -> float:
        return float(np.mean([np.min([found[d][a] for a in chosen], axis=0).mean() for d in found]))

    chosen = [BASELINE] if BASELINE in attacks else [attacks[0]]
    steps = [{"attack": chosen[0], "worst": worst(chosen), "gain": None}]
    while len(chosen) < len(attacks):
        current = worst(chosen)
        gains = {a: current - worst([*chosen, a]) for a in attacks if a not in chosen}
        best = max(gains, key=gains.get)
        if gains[best] < min_gain:
            break
        chosen.append(best)
        steps.append({"attack": best, "worst": worst(chosen), "gain": gains[best]})
    return steps


def markdown(found: dict, attacks: list[str], steps: list[dict], n: int, overrides: list[str],
             min_gain: float = MIN_GAIN) -> str:  # fmt: skip
    lines = [
        "# Transfer attacks chosen on the validation split",
        "",
        f"Validation robust accuracy (%) of each victim under each transfer attack at the headline budget, {n} "
        f"target validation examples, seed 0 (the test split was not read). Overrides: `{' '.join(overrides)}`.",
        "",
        "| attack | " + " | ".join(found) + " | mean |",
        "|---" * (len(found) + 2) + "|",
    ]
    for a in attacks:
        accs = [100 * found[d][a].mean() for d in found]
        lines.append(f"| {a} | " + " | ".join(f"{v:.1f}" for v in accs) + f" | {np.mean(accs):.1f} |")
    worst = [100 * np.min([found[d][a] for a in attacks], axis=0).mean() for d in found]
    lines.append("| **worst case of all** | " + " | ".join(f"{v:.1f}" for v in worst) + f" | {np.mean(worst):.1f} |")
    lines += ["", "Greedy choice (each step: the attack that lowers the mean worst case most; stop under "
              f"{100 * min_gain:g} points):", "", "| step | attack | mean worst case % | gain (points) |",
              "|---|---|---|---|"]  # fmt: skip
    for i, s in enumerate(steps):
        gain = "-" if s["gain"] is None else f"{100 * s['gain']:.1f}"
        lines.append(f"| {i} | {s['attack']} | {100 * s['worst']:.1f} | {gain} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides (experiment=..., data...)")
    parser.add_argument("--defenses", required=True, help="comma-separated victim defenses")
    parser.add_argument("--attacks", required=True, help="comma-separated transfer attacks, name or name@surrogate")
    parser.add_argument("--min-gain", type=float, default=100 * MIN_GAIN, help="points (default 0.5)")
    args = parser.parse_args(argv)
    defenses, attacks = args.defenses.split(","), args.attacks.split(",")
    try:
        found, n, where = outcomes(args.overrides, defenses, attacks)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steps = greedy(found, attacks, args.min_gain / 100)
    text = markdown(found, attacks, steps, n, args.overrides, args.min_gain / 100)
    out = Path(where) / "tuning"
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.md").write_text(text)
    per_defense = {d: {a: v.tolist() for a, v in by.items()} for d, by in found.items()}
    (out / "transfer.json").write_text(json.dumps({"n": n, "steps": steps, "per_example": per_defense}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
