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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from attacks.errors import ConfigError
from benchmark.records import Row, headline_eps
from benchmark.results import verdicts
from benchmark.results.claims import claims_from_config, run_claims
from benchmark.results.figures import plots
from benchmark.results.files import read_csv
from benchmark.results.leaderboard import leaderboard
from benchmark.runner.cache import code_fingerprint
from benchmark.runner.checks import flag_warnings
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


@dataclass
class Report:
    """What a report computed, once, for the run to hand on (W&B tracking, the closing log): the plot paths, the
    findings, every warning it shows and the budget each norm is ranked at (resolved on the rows)."""

    plots: dict[str, Path]
    found: list[dict]
    warnings: list[str]
    headline: dict[str, float]

    def to_json(self) -> dict:
        return {**asdict(self), "plots": {name: str(path) for name, path in self.plots.items()}}

    @classmethod
    def from_json(cls, d: dict) -> Report:
        return cls(**{**d, "plots": {name: Path(path) for name, path in d["plots"].items()}})


def report_inputs(report_config: dict) -> tuple[list, dict[str, str]]:
    """What the report reads of the defenses in report_config.json (`runner.config.report_defenses`): the claims the
    findings test (`benchmark.results.claims.run_claims`: each defense's, and those about attacks; the config's
    `report.claims` replaces them) and each defense's figure family. A run that wrote no defenses (written before their
    configs held them) gets every shipped defense's, as its report had them."""
    defenses = report_config["defenses"] if "defenses" in report_config else shipped_defenses()
    given = report_config.get("claims")
    claims = claims_from_config(given) if given else run_claims(defenses)
    return claims, {name: d["family"] for name, d in defenses.items()}


def write_report(
    out_dir: Path, rows: list[Row], per_example: dict | None, report_config: dict, warnings: list[str]
) -> Report:
    """Write leaderboard.md and the plots of a run from its rows.

    The warnings shown are `warnings` (the run's own: plan warnings and failures) followed by one per flag the
    runner raised. The headline budgets are `report_config`'s (the config's `report.headline`), each resolved on
    the rows here (`headline_eps`: the median swept budget of a norm whose headline was not swept). The claims and
    the figures' families are those the run wrote (`report_inputs`: every shipped defense's and the sweep's own).
    """
    if "headline" not in report_config:
        raise ConfigError("report_config.json has no headline budgets: rerun `make bench` to write them")
    headline = headline_eps(rows, report_config["headline"]) if rows else {}
    form = report_config.get("transferability", "success_ratio")
    warnings = list(dict.fromkeys([*warnings, *flag_warnings(rows)]))
    rows = [withheld(r) for r in rows]  # the flags stay, the numbers they withhold go (figures included)
    claims, families = report_inputs(report_config)
    found = verdicts.findings(rows, per_example, headline, claims)
    (out_dir / "leaderboard.md").write_text(
        leaderboard(rows, headline, form, warnings, found, report_config.get("machine"), per_example)
    )
    return Report(plots(rows, out_dir, headline, per_example, families), found, warnings, headline)


#: What the report is built from (`rebuild` reads the same files), and where a built report records their digest.
INPUTS = ("results.csv", "per_example.json", "run_warnings.json", "report_config.json")
STATE = "report_state.json"


def inputs_digest(out_dir: Path) -> str:
    """The digest of the report's input files in `out_dir` and of the code that draws it (this module and every
    suite module it imports: the cache keys' `code_fingerprint`)."""
    h = hashlib.sha256(code_fingerprint(["benchmark.results.report"]).encode())
    for name in INPUTS:
        path = Path(out_dir) / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"(none)") + b"\0")
    return h.hexdigest()


def write_report_if_changed(
    out_dir: Path, rows: list[Row], per_example: dict | None, report_config: dict, warnings: list[str]
) -> tuple[Report, bool]:
    """`write_report`, unless the report in `out_dir` was built from the same input files by the same code and
    its files are all there (a warm rerun: the leaderboard and plots would come out byte for byte the same); then
    what it computed is read back. The runner calls this after writing the input files; returns the `Report` and
    whether it was rebuilt."""
    out_dir = Path(out_dir)
    digest, state_file = inputs_digest(out_dir), out_dir / STATE
    try:
        state = json.loads(state_file.read_text())
        built = Report.from_json(state["report"])
        if state["digest"] == digest and all(p.exists() for p in [out_dir / "leaderboard.md", *built.plots.values()]):
            return built, False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no report yet, or an unreadable state: build it
    state_file.unlink(missing_ok=True)  # a report half written below must not look up to date
    built = write_report(out_dir, rows, per_example, report_config, warnings)
    state_file.write_text(json.dumps({"digest": digest, "report": built.to_json()}))
    return built, True


def rebuild(out_dir: Path) -> dict[str, Path]:
    """`make report`: leaderboard.md and the plots of a run from what it wrote in `out_dir` (results.csv, read back
    into rows, per_example.json, run_warnings.json, report_config.json; results.csv is only read); returns the plot
    paths."""
    out_dir = Path(out_dir)
    saved = read_outputs(out_dir)
    rows = read_csv(out_dir / "results.csv")
    return write_report(out_dir, rows, saved["per_example"], saved["report_config"], saved["run_warnings"]).plots


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
    try:
        paths = rebuild(out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'leaderboard.md'} and {', '.join(p.name for p in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
