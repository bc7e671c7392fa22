"""Command-line overrides: which ones change the sweep (and so where its results go), and a one-line error for a key
the config does not have.

Results never overwrite each other: the experiment's own sweep (`make bench`, `experiment=NAME` with at most settings
that change how it runs, not what it computes) writes `results/<experiment>/`; a sweep narrowed or changed on the
command line (`defense=[finetune,my_defense]`, `seeds=[0,1,2]`, `eval.n_examples=64`...) writes
`results/<experiment>/sweeps/<slug>/`, the slug read from its overrides and a hash of them and of the content of the
files they name (`teacher.checkpoint=FILE` and the like: an edited file is another sweep, in another folder).
`results_dir=...` on the command line puts a sweep anywhere.
"""

from __future__ import annotations

import difflib
import hashlib
import re

#: Overrides that change how a sweep runs or is shown, not what it computes: they keep results/<experiment>.
NOT_THE_SWEEP = ("experiment", "launcher", "logger", "progress", "cache_dir", "results_dir", "hydra")
#: Evaluation settings of that kind (the device and batch size do not change the numbers a cell computes).
NOT_THE_SWEEP_EVAL = ("eval.device", "eval.batch_size")
#: Overrides that name a file of weights: the sweep is what the file holds, so its folder follows the content.
FILE_KEYS = ("teacher.checkpoint", "teacher.common.checkpoint", "model.pretrained_file")


def key_of(override: str) -> str:
    """`++defense.pgd_at.module.steps=3` -> `defense.pgd_at.module.steps`; `~logger` -> `logger`."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def changes_the_sweep(override: str) -> bool:
    key = key_of(override)
    root = key.split(".", 1)[0]
    return root not in NOT_THE_SWEEP and not key.startswith(NOT_THE_SWEEP_EVAL)


def file_overrides(overrides: list[str]) -> dict[str, str]:
    """{override: the file it names} for the overrides that give a file of weights (FILE_KEYS), not null."""
    out = {}
    for o in overrides:
        value = o.split("=", 1)[1].strip() if "=" in o else ""
        if key_of(o) in FILE_KEYS and value not in ("", "null"):
            out[o] = value
    return out


def sweep_dir(overrides: list[str], contents: dict[str, str] | None = None) -> str | None:
    """The results folder of a sweep changed on the command line (relative to results/<experiment>), or None for
    the experiment's own sweep or when `results_dir` is given. `contents`: {override: a digest of the content of
    the file it names}, hashed with the overrides."""
    if any(key_of(o) == "results_dir" for o in overrides):
        return None
    changing = sorted(o for o in overrides if changes_the_sweep(o))
    if not changing:
        return None
    words = re.sub(r"[^A-Za-z0-9_.]+", "-", "_".join(o.lstrip("+~") for o in changing)).strip("-")
    salted = [f"{o}\x1e{(contents or {})[o]}" if o in (contents or {}) else o for o in changing]
    digest = hashlib.sha1("\x1f".join(salted).encode()).hexdigest()[:8]
    return f"sweeps/{words[:60].rstrip('-_.')}-{digest}"


def unknown_key_error(message: str, overrides: list[str], base: dict) -> str | None:
    """A one-line error for Hydra's "Could not override 'a.b'" or "Key 'b' is not in struct": the key, the closest
    valid keys at that place ("did you mean"), and every valid key there. None when the message is of another kind.
    `base`: the config composed without the command line's overrides."""
    m = re.search(r"Could not override '([\w.]+)'", message) or re.search(r"Key '(\w+)' is not in struct", message)
    if not m:
        return None
    wanted = m.group(1)
    full = next((key_of(o) for o in overrides if key_of(o).endswith(wanted)), wanted)
    parent, _, leaf = full.rpartition(".")
    node = base
    for part in filter(None, parent.split(".")):
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return f"unknown key '{full}': '{parent}' is not in the config (see `python -m benchmark.run --cfg`)"
    if not isinstance(node, dict):
        return f"'{parent}' is a value, not a group of keys: '{full}' cannot be set"
    valid = sorted(str(k) for k in node)
    close = difflib.get_close_matches(leaf, valid, n=2, cutoff=0.6) or [v for v in valid if v.startswith(leaf)][:2]
    hint = f" (did you mean {' or '.join(f'{parent}.{c}' if parent else c for c in close)}?)" if close else ""
    where = f"under '{parent}'" if parent else "at the top level"
    return f"unknown key '{full}'{hint}; valid keys {where}: {', '.join(valid)}"
