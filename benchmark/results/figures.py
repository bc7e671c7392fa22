"""The sweep's figures, per dataset pair: robust accuracy against epsilon, the attack x defense heatmap, and the
clean-versus-robust trade-off.

One colour per defense in every figure (`defense_colors`, fixed by the order of the defenses in the rows) and
one legend per figure for all of its panels. With several seeds a point is the mean over seeds and its band or error
bar the report's 95 % interval of that accuracy (`benchmark.results.files.PairResults.estimate`: random effects over
seeds and examples; a model trained once, its t interval over examples). Sanity-check rows are left out.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from benchmark.records import UNIONS, budget_key, eps_axis, eps_str, seed_note
from benchmark.results.figure_style import label, model_styles
from benchmark.results.files import Estimate, PairResults

WORST = "worst_case"


#: Flags whose numbers are not drawn as robustness: an attack that ignores a rejecting model's reject option, and a
#: number withheld for lack of an adaptive attack (the heatmap marks their cells "not adaptive").
NOT_DRAWN = frozenset({"ignores_reject_option", "no_adaptive_attack"})


def drawable(rows: list) -> tuple[list, set[tuple]]:
    """The rows a figure may draw, and (defense, attack, norm, eps) of those it must not (`NOT_DRAWN`)."""
    hidden = {(r.defense, r.attack, *r.budget_key) for r in rows if NOT_DRAWN & set(r.flag_list)}
    return [r for r in rows if (r.defense, r.attack, *r.budget_key) not in hidden], hidden


def _stat(e: Estimate | None) -> tuple[float, float, float] | None:
    """Mean and 95 % interval in percent (the interval collapses to the mean when there is none)."""
    if e is None or math.isnan(e.mean):
        return None
    mean = 100 * e.mean
    return (mean, mean, mean) if math.isnan(e.low) else (mean, max(0.0, 100 * e.low), min(100.0, 100 * e.high))


def _bar(stat: tuple[float, float, float]) -> list[list[float]] | None:
    """Error bar extents, or None for a single seed (no interval to draw)."""
    return None if stat[1] == stat[2] == stat[0] else [[stat[0] - stat[1]], [stat[2] - stat[0]]]


FLAGGED = " (flagged)"
FLAGGED_NOTE = "(flagged): the run's sanity checks flagged the model; its numbers may overestimate robustness"


def flagged_models(rows: list) -> set[str]:
    """The models with a row the run flagged (sanity rows included), other than the flags of numbers the figures
    leave out (`NOT_DRAWN`)."""
    return {r.defense for r in rows if set(r.flag_list) - NOT_DRAWN}


def _name(d: str, flagged: set[str]) -> str:
    return label(d) + (FLAGGED if d in flagged else "")


def _legend(fig, colors: dict[str, tuple], markers: dict[str, str], shown: list[str], flagged: set[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[d], marker=markers[d], linewidth=2, label=_name(d, flagged)) for d in shown]
    # what the mark means, under the legend's title
    note = {"title": "model\n" + "\n".join(textwrap.wrap(FLAGGED_NOTE, 28)), "title_fontsize": 8}
    fig.legend(handles=handles, loc="outside right upper", frameon=False,
               **(note if set(shown) & flagged else {"title": "model"}))  # fmt: skip


def _title(res: PairResults, pair: str) -> str:
    """Whose figure it is: the experiment, and the pair when its name says something else."""
    experiment = res.first.experiment
    return experiment if pair == experiment else f"{experiment} ({pair})"


def _budgets(res: PairResults, attack: str, norm: str) -> list[float]:
    """The budgets a panel draws: every swept one; for the worst case, those where a white-box attack ran on some
    model (elsewhere it holds transfer and mimicry alone, and would rise with epsilon)."""
    epss = res.epsilons(attack, norm)
    if attack != WORST:
        return epss
    return [
        e for e in epss if any(res.whitebox_at(d, norm, e) and res.values(d, attack, norm, e) for d in res.defenses)
    ]


def _lines(ax, res: PairResults, attack: str, norm: str, epss: list[float], colors, markers) -> set[str]:
    scale = 255 if norm == "linf" else 1
    shown = set()
    for d in res.defenses:
        drawn = [e for e in epss if attack != WORST or res.whitebox_at(d, norm, e)]
        pts = [(e * scale, s) for e in drawn if (s := _stat(res.estimate(d, attack, norm, e)))]
        if not pts:
            continue
        xs, stats = zip(*pts)
        ax.plot(xs, [s[0] for s in stats], color=colors[d], marker=markers[d], markersize=5, label=d)
        if any(s[1] != s[2] for s in stats):  # several seeds: the 95 % interval as a band
            ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats], color=colors[d], alpha=0.12)
        shown.add(d)
    ax.set_xticks([e * scale for e in epss], [eps_str(norm, e).replace("/255", "") for e in epss])
    ax.set(xlabel=eps_axis(norm), ylabel="robust accuracy (%)")
    ax.set_ylim(0, 100)
    note = "; budgets a white-box attack covered" if attack == WORST else ""
    ax.set_title(f"{attack} ({norm}{note})", fontsize=10)
    return shown


def _bars(ax, res: PairResults, attack: str, norm: str, eps: float, colors, single: str, flagged) -> set[str]:
    models = [d for d in res.defenses if attack != WORST or res.whitebox_at(d, norm, eps)]
    bars = [(d, s) for d in models if (s := _stat(res.estimate(d, attack, norm, eps)))]
    ys = range(len(bars))
    for y, (d, s) in zip(ys, bars):
        ax.barh(y, s[0], height=0.6, xerr=_bar(s), color=colors[d], capsize=2, label=d)
        ax.text(s[2] + 1.5, y, f"{s[0]:.0f}", va="center", fontsize=8)
    ax.set_yticks(list(ys), [_name(d, flagged) for d, _ in bars], fontsize=8)
    ax.set_ylim(len(bars) - 0.5 + max(0, 3 - len(bars)) / 2, -0.5 - max(0, 3 - len(bars)) / 2)
    ax.set_xlim(0, 108)
    ax.set_xlabel("robust accuracy (%)")
    ax.set_title(f"{attack} ({norm} {eps_str(norm, eps)}, {single})", fontsize=10)
    return {d for d, _ in bars}


def robust_vs_eps(
    res: PairResults, pair: str, colors: dict[str, tuple], markers: dict[str, str], flagged: set[str] = frozenset()
):
    """One panel per (attack, norm): a line per model over the budgets it covers, or, for an attack drawn at a
    single budget, a horizontal bar per model."""
    import matplotlib.pyplot as plt

    panels = [(a, n, epss) for a, n in res.attacks if (epss := _budgets(res, a, n))]
    panels.sort(key=lambda p: len(p[2]) == 1)  # the sweeps first, then the bars
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol + 1.6, 3.6 * nrow), squeeze=False, layout="constrained")
    shown: set[str] = set()
    for ax, (attack, norm, epss) in zip(axes.flat, panels):
        if len(epss) > 1:
            shown |= _lines(ax, res, attack, norm, epss, colors, markers)
        else:
            single = (
                "one budget" if len(res.epsilons(attack, norm)) == 1 else "the one budget a white-box attack covered"
            )
            shown |= _bars(ax, res, attack, norm, epss[0], colors, single, flagged)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    _legend(fig, colors, markers, [d for d in colors if d in shown], flagged)
    seeds = len({str(r.seed) for r in res.rows})
    spread = seed_note(seeds, "band or bar: 95 % interval over seeds and examples")
    fig.suptitle(f"{_title(res, pair)}: robust accuracy against the attack budget ({spread})", fontsize=12)
    return fig


def heatmap_columns(res: PairResults, headline: dict[str, float]) -> list[tuple[str, str, float]]:
    """Every (attack, norm) of the pair, each at its norm's headline budget, or at the swept budget nearest it;
    the worst cases last."""
    cols = []
    for attack, norm in res.attacks:
        epss = res.epsilons(attack, norm)
        cols.append((attack, norm, min(epss, key=lambda e: abs(e - headline[norm]))))
    return sorted(cols, key=lambda c: c[0] in UNIONS)


def heatmap(
    res: PairResults,
    pair: str,
    headline: dict[str, float],
    hidden: set[tuple] = frozenset(),
    flagged: set[str] = frozenset(),
):
    """Robust accuracy (%) of every model (rows, ranked) under every attack (columns); `hidden`: the cells whose
    numbers are not robustness (`drawable`), marked "not adaptive"."""
    import matplotlib
    import matplotlib.pyplot as plt

    cols = heatmap_columns(res, headline)
    defenses = res.ranked(headline)
    grid = np.full((len(defenses), len(cols)), math.nan)
    for i, d in enumerate(defenses):
        for j, (a, n, e) in enumerate(cols):
            if s := _stat(res.estimate(d, a, n, e)):
                grid[i, j] = s[0]
    fig, ax = plt.subplots(figsize=(2.6 + 1.05 * len(cols), 1.4 + 0.42 * len(defenses)), layout="constrained")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=100, cmap=cmap, aspect="auto")
    off = any(abs(e - headline[n]) > 1e-9 for _, n, e in cols)
    labels = [f"{a}\n{n} {eps_str(n, e)}" + ("*" if abs(e - headline[n]) > 1e-9 else "") for a, n, e in cols]
    ax.set_xticks(range(len(cols)), labels, fontsize=8, rotation=45, ha="right", rotation_mode="anchor")
    marks = set()
    ax.set_yticks(range(len(defenses)), [_name(d, flagged) for d in defenses], fontsize=9)
    if flagged & set(defenses):
        marks.add(FLAGGED_NOTE)
    if any(a in UNIONS for a, _, _ in cols):  # a rule between the single attacks and the worst cases
        ax.axvline(next(i for i, c in enumerate(cols) if c[0] in UNIONS) - 0.5, color="w", linewidth=3)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            a, n, e = cols[j]
            if (defenses[i], a, *budget_key(n, e)) in hidden:
                text, color = "not\nadaptive", "0.3"
                marks.add("not adaptive: the attack ignores the model's reject option (its number is no robustness)")
            elif math.isnan(v):
                text, color = "n/a", "0.4"
                marks.add("n/a: the attack does not apply to the model")
            else:
                text, color = f"{v:.0f}", "w" if v < 60 else "k"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=7 if "\n" in text else 8)
    fig.colorbar(im, ax=ax, label="robust accuracy (%)", shrink=0.9)
    budgets = ", ".join(f"{n} {eps_str(n, e)}" for n, e in headline.items())
    seeds = seed_note(len({str(r.seed) for r in res.rows}), "a cell is the mean")
    title = f"{_title(res, pair)}: robust accuracy (%) by attack and model at the headline budget ({budgets}; {seeds})"
    if off:
        title += "; * the attack's only budget, the nearest to the headline"
    ax.set_title("\n".join(textwrap.wrap(title, width=max(40, int(9 * len(cols))))), fontsize=10)
    if marks:
        ax.set_xlabel("; ".join(sorted(marks)), fontsize=8)
    return fig


def tradeoff(
    res: PairResults,
    pair: str,
    headline: dict[str, float],
    colors: dict[str, tuple],
    markers: dict[str, str],
    flagged: set[str] = frozenset(),
):
    """Clean accuracy against per-example worst-case robust accuracy at the headline L-inf budget (or, without a
    worst case, the strongest attack there), a dot per defense."""
    import matplotlib.pyplot as plt

    norm = "linf" if "linf" in headline else next(iter(headline))
    at = [(a, n) for a, n in res.attacks if n == norm]
    attack = WORST if (WORST, norm) in at else None
    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    shown, xs, ys = [], [], []
    for d in res.defenses:
        if attack:
            robust = res.estimate(d, attack, norm, headline[norm])
        else:  # the strongest attack there (the lowest mean)
            per_attack = [e for a, _ in at if (e := res.estimate(d, a, norm, headline[norm])) is not None]
            robust = min(per_attack, key=lambda e: e.mean, default=None)
        x, y = _stat(res.clean_estimate(d)), _stat(robust)
        if x is None or y is None:
            continue
        ax.errorbar(
            x[0], y[0], xerr=_bar(x), yerr=_bar(y), color=colors[d], marker=markers[d], markersize=9, capsize=2,
            markeredgecolor="k", markeredgewidth=0.5,
        )  # fmt: skip
        shown.append(d)
        xs += [x[1], x[2]]
        ys += [y[1], y[2]]
    what = "per-example worst case" if attack else "strongest attack"
    # Zoomed to the points (names by colour and marker in the legend: labels beside clustered points collide).
    pad = 5
    ax.set(
        xlabel="clean accuracy (%)",
        ylabel=f"robust accuracy (%), {what}, {norm} {eps_str(norm, headline[norm])}",
        xlim=(max(0, min(xs, default=0) - pad), min(100, max(xs, default=100) + pad)),
        ylim=(max(0, min(ys, default=0) - pad), min(100, max(ys, default=100) + pad)),
    )
    ax.grid(alpha=0.3)
    _legend(fig, colors, markers, [d for d in colors if d in shown], flagged)
    seeds = seed_note(len({str(r.seed) for r in res.rows}), "error bars: 95 % interval over seeds and examples")
    # Wrapped to the axes' width (about 48 characters at 11 pt): a wider title runs off the figure's left edge or into
    # the legend's title.
    ax.set_title(
        "\n".join(textwrap.wrap(f"{_title(res, pair)}: clean against robust accuracy ({seeds})", 48)), fontsize=11
    )
    return fig


def transfer(res: PairResults, pair: str, headline: dict[str, float], flagged: set[str] = frozenset()):
    """Robust accuracy (%) under each transfer attack (a bar per attack and surrogate, `worst_transfer` last) for
    every model, at the headline L-inf budget (or the nearest swept one); None without two transfer attacks."""
    import matplotlib
    import matplotlib.pyplot as plt

    attacks = [a for a, n in res.attacks if n == "linf" and any(r.attack == a and r.threat_model == "transfer"
                                                                 for r in res.rows)]  # fmt: skip
    if len(attacks) < 2:
        return None
    attacks += [a for a, n in res.attacks if a == "worst_transfer" and n == "linf"]
    eps = {a: min(res.epsilons(a, "linf"), key=lambda e: abs(e - headline["linf"])) for a in attacks}
    models = [d for d in res.ranked(headline) if any(res.estimate(d, a, "linf", eps[a]) for a in attacks)]
    cmap = matplotlib.colormaps["tab20"]
    fig_width = 6 + 0.9 * len(models) * max(1, len(attacks) / 6)  # the legend beside the bars takes about 3 in
    fig, ax = plt.subplots(figsize=(fig_width, 5), layout="constrained")
    width = 0.8 / len(attacks)
    for k, a in enumerate(attacks):
        stats = [_stat(res.estimate(d, a, "linf", eps[a])) for d in models]
        xs = [i + (k - (len(attacks) - 1) / 2) * width for i, s in enumerate(stats) if s]
        drawn = [s for s in stats if s]
        color = "k" if a == "worst_transfer" else cmap(k % 20)
        low, high = [s[0] - s[1] for s in drawn], [s[2] - s[0] for s in drawn]
        ax.bar(xs, [s[0] for s in drawn], width, yerr=[low, high] if any(low) or any(high) else None, color=color,
               label=a + ("" if abs(eps[a] - headline["linf"]) < 1e-9 else "*"), capsize=1.5)  # fmt: skip
    ax.set_xticks(range(len(models)), [_name(d, flagged) for d in models], rotation=30, ha="right", fontsize=9)
    ax.set_ylim(0, 100)
    ax.set_ylabel("robust accuracy (%) under transfer")
    ax.grid(axis="y", alpha=0.3)
    seeds = seed_note(len({str(r.seed) for r in res.rows}), "error bars: 95 % interval over seeds and examples")
    note = "; * the attack's nearest budget" if any(abs(e - headline["linf"]) > 1e-9 for e in eps.values()) else ""
    title = (f"{_title(res, pair)}: robust accuracy under each transfer attack (each crafted on its surrogate, never "
             f"on the model attacked), L-inf {eps_str('linf', headline['linf'])}{note} ({seeds})")  # fmt: skip
    fig.suptitle("\n".join(textwrap.wrap(title, int(11 * fig_width))), fontsize=10)
    ax.legend(title="transfer attack", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def figures(rows: list, headline: dict[str, float], per_example: dict | None = None,
            families: dict[str, str] | None = None) -> tuple[dict[str, object], dict[str, tuple]]:  # fmt: skip
    """The figures by file stem (robust_vs_eps, heatmap, tradeoff; `_<pair>` appended with several pairs) and the
    model colours they share; `headline`: the budget of each norm, resolved on the rows by the report
    (`benchmark.records.headline_eps`); `per_example` (per_example.json) gives the accuracies their intervals,
    `families` (defense -> family, from the configs) the colours' hues."""
    import matplotlib

    matplotlib.use("Agg")
    plain, hidden = drawable([r for r in rows if r.threat_model != "sanity"])
    colors, markers = model_styles(list(dict.fromkeys(r.defense for r in plain)), families)
    pairs = list(dict.fromkeys(r.pair for r in plain))
    out = {}
    for pair in pairs:
        res = PairResults([r for r in plain if r.pair == pair], per_example)
        suffix = "" if len(pairs) == 1 else f"_{pair}"
        flagged = flagged_models([r for r in rows if r.pair == pair])  # sanity rows included
        out[f"robust_vs_eps{suffix}"] = robust_vs_eps(res, pair, colors, markers, flagged)
        out[f"heatmap{suffix}"] = heatmap(res, pair, headline, hidden, flagged)
        out[f"tradeoff{suffix}"] = tradeoff(res, pair, headline, colors, markers, flagged)
        if "linf" in headline and (fig := transfer(res, pair, headline, flagged)) is not None:
            out[f"transfer{suffix}"] = fig
    return out, colors


def plots(rows: list, out_dir: Path, headline: dict[str, float], per_example: dict | None = None,
          families: dict[str, str] | None = None) -> dict[str, Path]:  # fmt: skip
    """Draw every figure into `out_dir` as PNG (`figures`); returns {stem: path}."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    figs, _ = figures(rows, headline, per_example, families)
    for stem, fig in figs.items():
        paths[stem] = out_dir / f"{stem}.png"
        fig.savefig(paths[stem], dpi=120)
        plt.close(fig)
    return paths
