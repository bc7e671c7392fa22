"""The sweep's outputs: results.csv (one row per cell), leaderboard.md, plots, and the sanity warnings.

`python -m benchmark.results.report results/<experiment>` rebuilds the leaderboard and plots from what the run wrote:
results.csv, per_example.json (the findings' paired tests), run_warnings.json and report_config.json. It only
reads: the flags in results.csv were raised once by the runner (`benchmark/runner/checks.py`), so a rebuilt leaderboard
says exactly what the original said, and results.csv stays as it is.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

from benchmark.results import verdicts as fnd
from benchmark.results.claims import claims_from_config, run_claims
from benchmark.runner.checks import flag_warnings
from benchmark.results.leaderboard import leaderboard
from benchmark.records import Row
from benchmark.results.files import read_csv
from benchmark.runner.config import shipped_defenses

#: Row fields blanked when a defense that may reject lacks an attack on its reject decision (`no_adaptive_attack`).
WITHHELD_FIELDS = ("robust_acc", "robust_acc_worst_of_k", "success_rate", "robust_acc_ci_low", "robust_acc_ci_high")


def withheld(row: Row) -> Row:
    """The row as the leaderboard shows it: without robustness numbers when the runner flagged it
    `no_adaptive_attack` (results.csv keeps them, with the flag)."""
    if "no_adaptive_attack" not in row.flag_list:
        return row
    return replace(row, **dict.fromkeys(WITHHELD_FIELDS))


def read_outputs(out_dir: Path) -> dict:
    """What a run left in `out_dir` besides results.csv: per_example.json, run_warnings.json, report_config.json
    (each optional; an older run has none of the first two)."""
    out_dir = Path(out_dir)

    def load(name: str, default):
        path = out_dir / name
        return json.loads(path.read_text()) if path.exists() else default

    return {
        "per_example": load("per_example.json", None),
        "run_warnings": load("run_warnings.json", []),
        "report_config": load("report_config.json", {}),
    }


def report_inputs(report_config: dict) -> tuple[list, dict[str, str]]:
    """What the report reads of the run's defenses in report_config.json: the claims the findings test
    (`benchmark.results.claims.run_claims`: each defense's, and those about attacks; the config's `report.claims`
    replaces them) and each defense's figure family. A run that wrote no defenses (written before their configs held
    them) gets every shipped defense's, as its report had them."""
    defenses = report_config["defenses"] if "defenses" in report_config else shipped_defenses()
    given = report_config.get("claims")
    claims = claims_from_config(given) if given else run_claims(defenses)
    return claims, {name: d["family"] for name, d in defenses.items()}


def write_report(
    out_dir: Path, rows: list[Row], per_example: dict | None, report_config: dict, warnings: list[str]
) -> tuple[dict[str, Path], list[dict]]:
    """Write leaderboard.md and the plots of a run from its rows; returns the plot paths and the findings (computed
    here, once: the run hands them to W&B tracking).

    The warnings shown are `warnings` (the run's own: plan warnings and failures) followed by one per flag the
    runner raised; none is recomputed. The claims and the figures' families are the run's defenses'
    (`report_inputs`).
    """
    headline = report_config.get("headline") or {"linf": 16 / 255, "l2": 1.0}  # config.yaml's default
    form = report_config.get("transferability", "success_ratio")
    warnings = list(dict.fromkeys([*warnings, *flag_warnings(rows)]))
    rows = [withheld(r) for r in rows]  # the flags stay, the numbers they withhold go (figures included)
    claims, families = report_inputs(report_config)
    found = fnd.findings(rows, per_example, headline, claims)
    (out_dir / "leaderboard.md").write_text(
        leaderboard(rows, headline, form, warnings, found, report_config.get("machine"), per_example)
    )
    from benchmark.results.figures import plots  # matplotlib: only when the figures are drawn

    return plots(rows, out_dir, headline, per_example, families), found


#: What the report is built from (`rebuild` reads the same files), and where a built report records their digest.
INPUTS = ("results.csv", "per_example.json", "run_warnings.json", "report_config.json")
STATE = "report_state.json"


def inputs_digest(out_dir: Path) -> str:
    """The digest of the report's input files in `out_dir` and of the code that draws it (this module and every
    suite module it imports: the cache keys' `code_fingerprint`)."""
    from benchmark.runner.cache import code_fingerprint

    h = hashlib.sha256(code_fingerprint(["benchmark.results.report"]).encode())
    for name in INPUTS:
        path = Path(out_dir) / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"(none)") + b"\0")
    return h.hexdigest()


def write_report_if_changed(
    out_dir: Path, rows: list[Row], per_example: dict | None, report_config: dict, warnings: list[str]
) -> tuple[dict[str, Path], list[dict], bool]:
    """`write_report`, unless the report in `out_dir` was built from the same input files by the same code and
    its files are all there (a warm rerun: the leaderboard and plots would come out byte for byte the same); then
    its plots and findings are read back. The runner calls this after writing the input files; returns
    (plots, findings, whether it was rebuilt)."""
    out_dir = Path(out_dir)
    digest, state_file = inputs_digest(out_dir), out_dir / STATE
    try:
        state = json.loads(state_file.read_text())
        plots = {name: Path(path) for name, path in state["plots"].items()}
        if state["digest"] == digest and all(p.exists() for p in [out_dir / "leaderboard.md", *plots.values()]):
            return plots, state["found"], False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no report yet, or an unreadable state: build it
    state_file.unlink(missing_ok=True)  # a report half written below must not look up to date
    plots, found = write_report(out_dir, rows, per_example, report_config, warnings)
    state = {"digest": digest, "plots": {name: str(path) for name, path in plots.items()}, "found": found}
    state_file.write_text(json.dumps(state))
    return plots, found, True


def rebuild(out_dir: Path) -> dict[str, Path]:
    """`make report`: leaderboard.md and the plots of a run from what it wrote in `out_dir` (results.csv, read back
    into rows, per_example.json, run_warnings.json, report_config.json; results.csv is only read); returns the plot
    paths."""
    out_dir = Path(out_dir)
    saved = read_outputs(out_dir)
    rows = read_csv(out_dir / "results.csv")
    return write_report(out_dir, rows, saved["per_example"], saved["report_config"], saved["run_warnings"])[0]


def main(argv: list[str] | None = None) -> int:
    """Rebuild leaderboard.md and the plots of a finished sweep (`make report`)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmark.results.report results/<experiment>", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not (out / "results.csv").exists():
        print(f"error: no results.csv in {out}; run `make bench` first", file=sys.stderr)
        return 2
    paths = rebuild(out)
    print(f"wrote {out / 'leaderboard.md'} and {', '.join(p.name for p in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
