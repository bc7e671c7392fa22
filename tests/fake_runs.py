"""A fabricated run for the report, W&B and figure tests: `fake_run` builds a plausible results.csv + per_example.json:
9 defenses and the teacher, 7 attacks (4 budgets for the swept ones, 1 for the randomized-only ones), the per-example
worst case, randomized sanity rows, flags. Outcomes are drawn per example from a latent difficulty, so every row's
robust_acc is the mean of its outcomes. No training, no attack.
"""

from __future__ import annotations

import zlib

import numpy as np

from benchmark.records import Row

N, K, HEADLINE = 200, 8, {"linf": 16 / 255, "l2": 1.0}
#: (defense, randomized, robustness): the share of clean-correct examples that survive a mid-size attack
DEFENSES = [
    ("teacher", False, 0.05),
    ("scratch", False, 0.10),
    ("finetune", False, 0.15),
    ("freeze", False, 0.12),
    ("pgd_at", False, 0.55),
    ("trades", False, 0.60),
    ("tla", False, 0.58),
    ("genaf", False, 0.50),
    ("purifier", True, 0.30),
    ("atop", True, 0.60),
]
LINF = [4 / 255, 8 / 255, 16 / 255, 32 / 255]
#: (attack, norm, threat model, budgets, applies to randomized models?, strength, examples)
ATTACKS = [
    ("fgsm", "linf", "white-box", LINF, False, 0.7, N),
    ("pgd_linf", "linf", "white-box", LINF, False, 1.0, N),
    ("pgd_l2", "l2", "white-box", [0.25, 0.5, 1.0, 2.0], False, 1.0, N),
    ("transfer_pgd_linf", "linf", "transfer", LINF, None, 0.5, N),
    ("eot_pgd_linf", "linf", "white-box", [16 / 255], True, 1.0, 128),
    ("bpda_eot_pgd_linf", "linf", "white-box", [16 / 255], True, 0.9, 128),
    ("autoattack_rand", "linf", "white-box", [16 / 255], True, 1.1, 8),
]


def _label(norm: str, eps: float) -> str:
    return f"{round(eps * 255, 3):g}/255" if norm == "linf" else f"{eps:g}"


def fake_row(pair, defense, seed, attack, norm, eps, threat, clean, robust, randomized, **extra) -> Row:
    label = _label(norm, eps)
    return Row(
        experiment="fake",
        pair=pair,
        source="svhn",
        target="mnist",
        model="small_cnn",
        defense=defense,
        mode="pretrain",
        seed=seed,
        attack=attack,
        threat_model=threat,
        surrogate="teacher" if threat == "transfer" else "",
        norm=norm,
        eps=eps,
        eps_label=label,
        steps=1 if attack == "fgsm" else 20,
        clean_acc=float(np.mean(clean)),
        robust_acc=float(np.mean(robust)),
        robust_acc_worst_of_k=float(np.mean(np.asarray(robust) == 1)),
        success_rate=1 - float(np.mean(robust)) / max(float(np.mean(clean)), 1e-9),
        n_examples=len(robust),
        draws=K if randomized else 1,
        transferability=0.6 if threat == "transfer" else None,
        detection_auroc=0.7 if threat == "white-box" else None,
        train_seconds=12.5 + seed,
        prep_seconds=None,
        randomized_defense=randomized,
        cached=False,
        flags=extra.pop("flags", ""),
        row_id=f"{pair}/{defense}/seed{seed}/{attack}/{norm}/{label}",
        model_key=f"key-{pair}-{defense}-{seed}",
        examples=f"first {len(robust)} target test examples",
        **extra,
    )


def fake_run(pairs=("svhn_mnist",), seeds=(0,), defenses=DEFENSES, attacks=ATTACKS) -> tuple[list[Row], dict]:
    """Rows and per-example outcomes of a plausible sweep (see the module docstring)."""
    rows, per_example = [], {}
    for pair in pairs:
        for seed in seeds:
            rng = np.random.default_rng([zlib.crc32(pair.encode()), seed])
            hardness = rng.random(N)  # one latent difficulty per example, shared by every model
            for defense, randomized, level in defenses:
                clean_p = np.clip(0.97 - 0.3 * level - 0.4 * hardness, 0.02, 1)
                resolve = rng.random(N)  # how hard each example is to attack on this model, for every attack
                # randomized: the fraction of K draws that are right; deterministic: 0/1
                model_clean = rng.binomial(K, clean_p) / K if randomized else (rng.random(N) < clean_p) * 1.0
                by_budget: dict = {}
                for attack, norm, threat, budgets, rand_only, strength, n in attacks:
                    if rand_only is not None and rand_only != randomized:
                        continue
                    for eps in budgets:
                        size = eps * 255 / 16 if norm == "linf" else eps
                        survive = np.clip(level * 2.2 * np.exp(-0.6 * strength * size) * (1.2 - hardness), 0, 1)
                        clean = model_clean
                        if randomized:
                            robust = np.minimum(clean, rng.binomial(K, clean_p * survive) / K)
                        else:
                            robust = clean * (resolve + 0.05 * rng.standard_normal(N) < survive)
                        clean, robust = clean[:n], robust[:n]
                        row = fake_row(pair, defense, seed, attack, norm, eps, threat, clean, robust, randomized)
                        rows.append(row)
                        per_example[row.row_id] = {"clean": clean.tolist(), "robust": robust.tolist()}
                        if threat == "white-box" or attack.startswith("transfer"):
                            by_budget.setdefault((norm, eps), []).append((attack, clean, robust))
                for (norm, eps), members in by_budget.items():
                    if len(members) < 2:
                        continue
                    n = max(len(r) for _, _, r in members)
                    clean = next(c for _, c, r in members if len(r) == n)
                    stacked = np.stack([np.concatenate([r, clean[len(r) :]]) for _, _, r in members])
                    robust = stacked.min(0)
                    union = "union: " + "+".join(a for a, _, _ in members)
                    row = fake_row(pair, defense, seed, "worst_case", norm, eps, union, clean, robust, randomized)
                    rows.append(row)
                    per_example[row.row_id] = {"clean": clean.tolist(), "robust": robust.tolist()}
                if randomized:
                    for check, eps, flag in (
                        ("sanity_frozen_randomness", 16 / 255, "frozen_randomness_attack_fails"),
                        ("sanity_unbounded", 1.0, ""),
                    ):
                        c = np.ones(32)
                        rows.append(
                            fake_row(pair, defense, seed, check, "linf", eps, "sanity", c, c * 0.5, True, flags=flag)
                        )
    return rows, per_example
