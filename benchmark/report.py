"""The sweep's outputs: results.csv (one row per cell), leaderboard.md, plots, and the sanity warnings.

`python -m benchmark.report results/<experiment>` rebuilds the leaderboard and plots from results.csv.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path

from benchmark.checks import sanity_flags
from benchmark.metrics import SANITY_TOL


# ---- results.csv --------------------------------------------------------------------------------------
def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else []
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_csv(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return list(csv.DictReader(f))


# ---- leaderboard ---------------------------------------------------------------------------------------
def _num(v) -> float | None:
    try:
        x = None if v in (None, "", "None") else float(v)
    except ValueError:
        return None
    return None if x is None or math.isnan(x) else x


def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _eps_str(norm: str, eps: float) -> str:
    return f"{round(eps * 255, 3):g}/255" if norm == "linf" else f"{eps:g}"


class PairResults:
    """The rows of one dataset pair, with the lookups the leaderboard and the plots need."""

    def __init__(self, rows: list[dict]):
        self.sanity = [r for r in rows if r["threat_model"] == "sanity"]
        self.rows = [r for r in rows if r["threat_model"] != "sanity"]
        self.first = self.rows[0]
        self.defenses = list(dict.fromkeys(r["defense"] for r in self.rows))
        self.attacks = list(dict.fromkeys((r["attack"], r["norm"]) for r in self.rows))

    def values(self, defense: str, attack: str, norm: str, eps: float, field: str = "robust_acc") -> list[float]:
        """One value per seed (absent and NaN values left out)."""
        vals = (
            _num(r[field])
            for r in self.rows
            if r["defense"] == defense
            and r["attack"] == attack
            and r["norm"] == norm
            and abs(float(r["eps"]) - eps) < 1e-9
        )
        return [v for v in vals if v is not None]

    def clean(self, defense: str) -> list[float]:
        """Clean accuracy per seed, from the row with the most examples (attacks may run on the first n only)."""
        best: dict = {}
        for r in self.rows:
            if r["defense"] == defense and int(r["n_examples"]) > int(best.get(r["seed"], {}).get("n_examples", -1)):
                best[r["seed"]] = r
        vals = (_num(r["clean_acc"]) for r in best.values())
        return [v for v in vals if v is not None]

    def field(self, defense: str, field: str) -> list[float]:
        """A per-model field (one value per seed)."""
        by_seed = {r["seed"]: _num(r.get(field)) for r in self.rows if r["defense"] == defense}
        return [v for v in by_seed.values() if v is not None]

    def epsilons(self, attack: str, norm: str) -> list[float]:
        return sorted({round(float(r["eps"]), 10) for r in self.rows if r["attack"] == attack and r["norm"] == norm})

    def ranked(self, headline: dict[str, float]) -> list[str]:
        """Defenses by per-example worst-case robust accuracy at the headline budgets (else the weakest attack)."""

        def score(defense: str) -> float:
            at = [(a, n, headline[n]) for a, n in self.attacks if n in headline]
            worst = [v for a, n, e in at if a == "worst_case" for v in self.values(defense, a, n, e)]
            vals = worst or [min((v for a, n, e in at for v in self.values(defense, a, n, e)), default=0.0)]
            return -statistics.mean(vals)

        return sorted(self.defenses, key=score)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in body)]


def leaderboard(rows: list[dict], headline: dict[str, float], transferability_form: str, warnings: list[str]) -> str:
    """Markdown: per dataset pair, defenses ranked by per-example worst-case robust accuracy at the headline budget."""
    hl = headline_eps(rows, headline)
    lines = [
        f"# Leaderboard: {rows[0]['experiment']}" if rows else "# Leaderboard",
        "",
        "Robust accuracy (%) counts an example as robust only if the model is right on it when clean and under "
        "the attack (mean ± std over seeds when there are several); for a randomized defense, the accuracy on "
        "the final adversarial examples averaged over fresh draws of its randomness. `worst_case` is per example "
        "over every attack at that norm and epsilon. Attacks may run on fewer examples (see results.csv "
        "`n_examples`). Ranking: worst case at the headline budget ("
        + ", ".join(f"{n} {_eps_str(n, e)}" for n, e in hl.items())
        + ").",
        "",
    ]
    for pair in dict.fromkeys(r["pair"] for r in rows):
        res = PairResults([r for r in rows if r["pair"] == pair])
        f = res.first
        ranked = res.ranked(hl)
        cols = [(a, n, hl[n]) for a, n in res.attacks if any(res.values(d, a, n, hl[n]) for d in ranked)]
        base = res.clean("finetune")
        lines += [
            f"## {pair}: {f['source']} -> {f['target']} ({f['model']}, {f['n_examples']} target test examples)",
            "",
        ]
        if base:
            lines += ["`clean cost`: clean accuracy minus plain fine-tuning's (points).", ""]
        lines += _table(
            [
                "rank",
                "defense",
                "clean",
                *(["clean cost"] if base else []),
                *(f"{a} {_eps_str(n, e)}" for a, n, e in cols),
            ],
            [
                [
                    str(i),
                    d,
                    _pct(res.clean(d)),
                    *([_diff(res.clean(d), base)] if base else []),
                    *(_pct(res.values(d, a, n, e)) for a, n, e in cols),
                ]
                for i, d in enumerate(ranked, 1)
            ],
        )
        whitebox = [
            (a, n)
            for a, n in res.attacks
            if any(r["attack"] == a and r["threat_model"] == "white-box" for r in res.rows)
        ]
        lines += [
            "",
            "### Detecting adversarial inputs from the representation (AUROC, %)",
            "",
            "Score: 1 - |cos| to the nearest clean target-training example of the predicted class, in the "
            "model's penultimate representation (our rule; see `benchmark/detection.py`). Clean-correct test "
            "examples against the adversarial examples that fool the model; 50 is chance.",
            "",
        ]
        lines += _table(
            ["defense", *(f"{a} {_eps_str(n, hl[n])}" for a, n in whitebox)],
            [[d, *(_pct(res.values(d, a, n, hl[n], "detection_auroc")) for a, n in whitebox)] for d in ranked],
        )
        if res.sanity:
            lines += [
                "",
                "### Sanity checks of the randomized defenses",
                "",
                "Frozen randomness: the EOT attack without EOT on the model with its randomness fixed (it must "
                "succeed). Unbounded: eps = 1 (it must reach chance). The doubled attack (`_x2`: twice the "
                "steps and EOT samples) is with the attacks above and in the worst case; flags are listed "
                "below.",
                "",
            ]
            lines += _table(
                ["defense", "check", "examples", "clean", "robust", "flags"],
                [
                    [
                        r["defense"],
                        r["attack"],
                        str(r["n_examples"]),
                        _pct([_num(r["clean_acc"])]),
                        _pct([_num(r["robust_acc"])]),
                        r.get("flags") or "ok",
                    ]
                    for r in res.sanity
                ],
            )
        randomized = [r for r in res.rows if (_num(r.get("draws")) or 1) > 1 and r["attack"] != "worst_case"]
        if randomized:
            lines += [
                "",
                "### Randomized defenses: every attack, scored after optimizing",
                "",
                f"Each final adversarial example is scored over K = {int(_num(randomized[0]['draws']))} fresh draws "
                "of the randomness: `robust` is the accuracy averaged over the draws (every example attacked), "
                "`worst of K` counts an example only if all K draws are right. Cost: examples x passes through the "
                "deployed model, and wall seconds.",
                "",
            ]
            lines += _table(
                ["defense", "attack", "eps", "examples", "clean", "robust", "worst of K", "fwd", "bwd", "seconds"],
                [
                    [
                        r["defense"],
                        r["attack"],
                        str(r["eps_label"]),
                        str(r["n_examples"]),
                        _pct([_num(r["clean_acc"])]),
                        _pct([_num(r["robust_acc"])]),
                        _pct([_num(r["robust_acc_worst_of_k"])]),
                        _count(r.get("forward_passes")),
                        _count(r.get("backward_passes")),
                        _mean_str([v for v in [_num(r.get("wall_seconds"))] if v is not None], ".1f"),
                    ]
                    for r in randomized
                ],
            )
        lines += ["", "### Training cost (seconds, this run's machine)", ""]
        lines += _table(
            ["defense", "training", "preparation"],
            [
                [d, _mean_str(res.field(d, "train_seconds"), ".1f"), _mean_str(res.field(d, "prep_seconds"), ".1f")]
                for d in ranked
            ],
        )
        lines += ["", "### Robust accuracy (%) against epsilon", ""]
        for a, n in res.attacks:
            epss = res.epsilons(a, n)
            lines += [f"**{a}** ({n})", ""]
            lines += _table(
                ["defense", *(_eps_str(n, e) for e in epss)],
                [[d, *(_pct(res.values(d, a, n, e)) for e in epss)] for d in ranked],
            )
            lines.append("")
        transfer = [
            (a, n)
            for a, n in res.attacks
            if any(r["threat_model"] == "transfer" and r["attack"] == a for r in res.rows)
        ]
        if transfer:
            lines += [
                "### Transferability from the teacher",
                "",
                f"T = {transferability_form}: {FORM_DOC[transferability_form]} This is our reading of Zhang et al. "
                "2020 (arXiv 2008.11089): the paper's formula is unverified (see `benchmark/metrics.py`). Both "
                "readings are in results.csv.",
                "",
            ]
            keys = [(a, n, e) for a, n in transfer for e in res.epsilons(a, n)]
            lines += _table(
                ["defense", *(f"{a} {_eps_str(n, e)}" for a, n, e in keys)],
                [[d, *(_mean_str(res.values(d, a, n, e, "transferability")) for a, n, e in keys)] for d in ranked],
            )
            lines.append("")
    lines += ["## Sanity checks", ""]
    if warnings:
        lines += [f"- WARNING: {w}" for w in warnings]
    else:
        lines.append(
            "No check failed: iterative attacks are at least as strong as single-step ones, white-box at least as "
            f"strong as transfer, and robust accuracy falls with epsilon (tolerance {100 * SANITY_TOL:.0f} points)."
        )
    lines.append("")
    return "\n".join(lines)


FORM_DOC = {
    "success_ratio": "ASR_B(x'_A) / ASR_B(x'_B), the transfer attack's success rate on the student over the "
    "white-box one's; 1 means transfer is as effective as white-box.",
    "accuracy_drop": "(acc_B(x) - acc_B(x'_A)) / (acc_B(x) - acc_B(x'_B)) with raw accuracies.",
}


def _count(v) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:,.0f}"


def _mean_str(values: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.mean(values):{fmt}}" if values else "-"


def _diff(values: list[float], base: list[float]) -> str:
    return f"{100 * (statistics.mean(values) - statistics.mean(base)):+.1f}" if values and base else "-"


def headline_eps(rows: list[dict], headline: dict) -> dict[str, float]:
    """The budget each norm is ranked at: the configured one if swept, else the median swept value."""
    out = {}
    for norm in sorted({r["norm"] for r in rows}, key=lambda n: n != "linf"):
        swept = sorted({round(float(r["eps"]), 10) for r in rows if r["norm"] == norm})
        want = headline.get(norm)
        out[norm] = want if want is not None and any(abs(e - want) < 1e-9 for e in swept) else swept[len(swept) // 2]
    return out


# ---- plots ------------------------------------------------------------------------------------------------
def plots(rows: list[dict], out_dir: Path, headline: dict[str, float]) -> dict[str, Path]:
    """robust_vs_eps.png (one panel per attack, a line per defense) and heatmap.png (attack x defense)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    for pair in pairs:
        res = PairResults([r for r in rows if r["pair"] == pair])
        suffix = "" if len(pairs) == 1 else f"_{pair}"
        ncol = min(3, len(res.attacks))
        nrow = math.ceil(len(res.attacks) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
        for ax, (attack, norm) in zip(axes.flat, res.attacks):
            scale = 255 if norm == "linf" else 1
            for d in res.defenses:
                pts = [(e, res.values(d, attack, norm, e)) for e in res.epsilons(attack, norm)]
                pts = [(e * scale, 100 * statistics.mean(v)) for e, v in pts if v]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=d)
            ax.set(
                title=f"{attack} ({norm})",
                ylabel="robust accuracy (%)",
                ylim=(0, 100),
                xlabel="epsilon (x/255)" if norm == "linf" else "epsilon (L2)",
            )
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(res.attacks) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(f"{pair}: robust accuracy against epsilon")
        fig.tight_layout()
        paths[f"robust_vs_eps{suffix}"] = out_dir / f"robust_vs_eps{suffix}.png"
        fig.savefig(paths[f"robust_vs_eps{suffix}"], dpi=120)
        plt.close(fig)

        hl = headline_eps(res.rows, headline)
        cols = [(a, n) for a, n in res.attacks if hl[n] in res.epsilons(a, n)]
        grid = [
            [100 * statistics.mean(v) if (v := res.values(d, a, n, hl[n])) else math.nan for a, n in cols]
            for d in res.defenses
        ]
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 1.2 + 0.5 * len(res.defenses)))
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [f"{a}\n{n} {_eps_str(n, hl[n])}" for a, n in cols], fontsize=8)
        ax.set_yticks(range(len(res.defenses)), res.defenses)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=8)
        fig.colorbar(im, ax=ax, label="robust accuracy (%)")
        ax.set_title(f"{pair}: attack x defense at the headline budget", fontsize=9)
        fig.tight_layout()
        paths[f"heatmap{suffix}"] = out_dir / f"heatmap{suffix}.png"
        fig.savefig(paths[f"heatmap{suffix}"], dpi=120)
        plt.close(fig)
    return paths


def write_report(rows: list[dict], out_dir: Path, headline: dict[str, float], transferability_form: str):
    """Flag the rows, then write results.csv first, then leaderboard.md and the plots. Returns (warnings, paths)."""
    warnings = sanity_flags(rows)
    write_csv(rows, out_dir / "results.csv")  # first: nothing after this can lose a result
    (out_dir / "leaderboard.md").write_text(leaderboard(rows, headline, transferability_form, warnings))
    return warnings, plots(rows, out_dir, headline)


def main(argv: list[str] | None = None) -> int:
    """Rebuild leaderboard.md and the plots of a finished sweep from its results.csv."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmark.report results/<experiment>", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not (out / "results.csv").exists():
        print(f"error: no results.csv in {out}; run `make bench` first", file=sys.stderr)
        return 2
    rows = read_csv(out / "results.csv")
    for r in rows:
        r["flags"] = ""
    from attacks.base import parse_eps

    headline = {"linf": parse_eps("16/255"), "l2": 1.0}
    meta = out / "report_config.json"
    form = "success_ratio"
    if meta.exists():
        import json

        saved = json.loads(meta.read_text())
        headline, form = saved["headline"], saved["transferability"]
    warnings = sanity_flags(rows)
    (out / "leaderboard.md").write_text(leaderboard(rows, headline, form, warnings))
    plots(rows, out, headline)
    print(f"wrote {out / 'leaderboard.md'} and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
