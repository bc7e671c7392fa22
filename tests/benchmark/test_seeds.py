"""Verdicts about methods: the crossed bootstrap over seeds and examples, on outcomes whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.findings import Claim, findings
from benchmark.records import Row
from benchmark.seeds import ONE_SEED, crossed_bootstrap, markdown, method_claims, ranking

HEADLINE = {"linf": 16 / 255}
CLAIM = Claim("a is more robust than b under pgd", "test", higher="a", lower="b", attack="pgd")


def _row(defense: str, seed: int, attack: str = "pgd") -> Row:
    return Row(pair="p", defense=defense, seed=seed, attack=attack, threat_model="white-box", norm="linf",
               eps=16 / 255, eps_label="16/255", row_id=f"p/{defense}/seed{seed}/{attack}")  # fmt: skip


def outcomes(n: int, accuracy: float, rng: np.random.Generator) -> list[float]:
    """n 0/1 outcomes, exactly round(accuracy * n) of them 1, in a random order."""
    k = round(accuracy * n)
    return rng.permutation([1.0] * k + [0.0] * (n - k)).tolist()


def sweep(accuracies: dict[str, list[float]], n: int = 1000, attack: str = "pgd") -> tuple[list[dict], dict]:
    """Rows and per-example outcomes: defense -> its robust accuracy in each seed (independent examples)."""
    rng = np.random.default_rng(0)
    rows, per_example = [], {}
    for defense, by_seed in accuracies.items():
        for seed, acc in enumerate(by_seed):
            row = _row(defense, seed, attack)
            rows.append(row)
            per_example[row.row_id] = {"robust": outcomes(n, acc, rng)}
    return rows, per_example


def test_the_interval_holds_the_seed_variance():
    examples = np.random.default_rng(1).integers(0, 2, size=500).astype(float)
    same = np.stack([examples] * 3)  # three seeds that agree on every example
    spread = same + np.array([[-0.2], [0.0], [0.2]])  # the same examples, seeds 0.4 apart
    width = lambda m: float(np.subtract(*np.quantile(crossed_bootstrap(m), [0.975, 0.025])))  # noqa: E731
    assert width(spread) > 2 * width(same)
    assert crossed_bootstrap(same).mean() == pytest.approx(examples.mean(), abs=0.01)


def test_seeds_that_disagree_give_no_verdict_about_the_method_though_each_seed_is_significant():
    rows, per_example = sweep({"a": [0.6, 0.3, 0.6], "b": [0.3, 0.6, 0.3]})
    per_seed = findings(rows, per_example, HEADLINE, [CLAIM])[0]["per_seed"]
    assert [t["verdict"] for t in per_seed] == ["supported", "contradicted", "supported"]
    (method,) = method_claims(rows, per_example, HEADLINE, [CLAIM])
    assert method["verdict"] == "not supported" and method["seeds_with_sign"] == 2
    assert method["ci_low"] < 0 < method["ci_high"]


def test_a_difference_every_seed_shows_is_supported_and_the_reverse_contradicted():
    rows, per_example = sweep({"a": [0.6, 0.55, 0.62], "b": [0.3, 0.32, 0.28]})
    (method,) = method_claims(rows, per_example, HEADLINE, [CLAIM])
    assert method["verdict"] == "supported" and method["seeds_with_sign"] == 3
    assert method["difference"] == pytest.approx(np.mean([0.3, 0.23, 0.34]), abs=1e-9)
    reverse = Claim("b > a", "test", higher="b", lower="a", attack="pgd")
    assert method_claims(rows, per_example, HEADLINE, [reverse])[0]["verdict"] == "contradicted"


def test_ranking_by_the_mean_over_seeds():
    rows, per_example = sweep({"a": [0.5, 0.5, 0.11], "b": [0.4, 0.4, 0.4]}, attack="worst_case")
    entries = ranking(rows, per_example, HEADLINE)["p"]
    assert [e["defense"] for e in entries] == ["b", "a"]  # a wins two seeds of three, b has the higher mean
    assert entries[1]["mean"] == pytest.approx(0.37) and entries[1]["per_seed"] == pytest.approx([0.5, 0.5, 0.11])
    assert entries[1]["ci_low"] < 0.37 < entries[1]["ci_high"]


def test_one_seed_says_the_verdict_is_about_one_model():
    rows, per_example = sweep({"a": [0.6], "b": [0.3]})
    text = markdown(rows, per_example, HEADLINE, [CLAIM])
    assert ONE_SEED in text
    rows, per_example = sweep({"a": [0.6, 0.6], "b": [0.3, 0.3]})
    text = markdown(rows, per_example, HEADLINE, [CLAIM])
    assert ONE_SEED not in text and "**supported**" in text


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(seeds, examples\) matrix"):
        crossed_bootstrap(np.zeros(3))
