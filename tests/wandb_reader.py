"""Reads back what an offline W&B run wrote to disk (`run-<id>.wandb`), without W&B's servers.

The file is a W&B header followed by records in LevelDB's log format (32 KiB blocks; each chunk has a
4-byte checksum, a 2-byte length and a 1-byte type: full, first, middle, last); every record is a
`wandb_internal_pb2.Record` protobuf.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file")
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # the rest of a block too small for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def finished_records(path: Path, timeout: float = 60.0) -> list[pb.Record]:
    """The records of a finished run, once its file holds them all (the `exit` record).

    `run.finish()` can return before W&B's service has written an offline run's file (seen on a loaded machine:
    the file still held its header only), so a reader right after `finish` waits for the rest.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            recs = records(path)
            if any(r.WhichOneof("record_type") == "exit" for r in recs):
                return recs
        except Exception:  # noqa: BLE001 - a record still being written does not parse yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout:g} s; the run did not finish")
        time.sleep(0.1)


def _value(item) -> object:
    return json.loads(item.value_json)


def _set_config(config: dict, item) -> None:
    """A config update: a top-level key, or a nested one (W&B files a logged chart under _wandb/visualize/<key>)."""
    if item.key:
        config[item.key] = _value(item)
        return
    *parents, last = item.nested_key
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = _value(item)


def read_run(path: Path) -> dict:
    """id, name, group, job_type, config, summary (last values), history (every logged step, media as their
    metadata), history_keys, tables {key: {nrows, ncols, path}}, charts {key: panel config} (`wandb.plot.*`: the
    Vega spec `panelDefId`, `fieldSettings`, `stringSettings`, the table it reads)."""
    run: dict = {"config": {}, "summary": {}, "history": [], "history_keys": [], "tables": {}}
    for rec in finished_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.update(id=r.run_id, name=r.display_name, group=r.run_group, job_type=r.job_type)
            for item in r.config.update:
                _set_config(run["config"], item)
        elif kind == "config":
            for item in rec.config.update:
                _set_config(run["config"], item)
        elif kind == "history":
            # Nested values (a table's or an image's metadata) arrive flattened: results/_type, results/nrows, ...
            row = {i.key or "/".join(i.nested_key): _value(i) for i in rec.history.item}
            run["history"].append(row)
            run["history_keys"].append(list(row))
            for key, v in row.items():
                if key.endswith("/_type") and str(v).startswith("table"):
                    name = key[: -len("/_type")]
                    run["tables"][name] = {k: row.get(f"{name}/{k}") for k in ("nrows", "ncols", "path")}
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                run["summary"][key] = _value(item)
    # W&B stores a config value as {"value": v}; unwrap it.
    run["config"] = {
        k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v for k, v in run["config"].items()
    }
    visualize = (run["config"].get("_wandb") or {}).get("visualize") or {}
    run["charts"] = {key: spec["panel_config"] for key, spec in visualize.items()}
    return run


def read_table(path: Path, run: dict, key: str) -> tuple[list[str], list[list]]:
    """The columns and rows of the table `key` that the run of `path` (its .wandb file) logged."""
    table = json.loads((Path(path).parent / "files" / run["tables"][key]["path"]).read_text())
    return table["columns"], table["data"]


def chart_table_key(chart: dict) -> str:
    """The table a logged chart reads (`summaryTable` in its query)."""
    fields = chart["userQuery"]["queryFields"][0]["fields"]
    return next(f["args"][0]["value"] for f in fields if f["name"] == "summaryTable")
