"""The one-screen summary printed at the end of a run, read from its record."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from rnnbench.results.record import RECORD_FILE
from rnnbench.tasks import KINDS, REFERENCE_SUFFIXES


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def reset_form(model: dict[str, Any]) -> str:
    """ ", reset before" for a GRU whose reset gate acts before the recurrent product (Cho et
    al. 2014's form), which would otherwise read as the default GRU; "" for any other model."""
    return ", reset before" if model["cell"] == "gru" and model.get("gru_reset") == "before" else ""


def format_summary(record: dict[str, Any]) -> str:
    """A few aligned lines: what ran, how well, how fast, and where its files are."""
    config, metrics = record["config"], record["metrics"]
    model = config["model"]
    direction = "bidirectional" if model["bidirectional"] else "unidirectional"
    lines = [
        ("status", record["status"]),
        ("dataset", config["data"]["name"]),
        (
            "model",
            f"{model['cell']} ({model['impl']}{reset_form(model)}), {model['num_layers']} x "
            f"{model['hidden_size']}, {direction}",
        ),
        ("parameters", f"{record['params']:,}" if record["params"] else "?"),
        ("clip", config["trainer"].get("gradient_clip_val")),
    ]
    env = record.get("env") or {}
    if env.get("device"):
        world = env.get("world_size") or 1
        lines.append(("device", env["device"] + (f", {world} processes" if world > 1 else "")))
    for split in ("val", "test"):
        ours = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{split}/")}
        parts = [f"{k} {_fmt(v)}" for k, v in ours.items() if not k.endswith(REFERENCE_SUFFIXES)]
        refs = [f"{k} {_fmt(v)}" for k, v in ours.items() if k.endswith(REFERENCE_SUFFIXES)]
        if "ppl" in ours and "ppl_optimal" in ours:
            refs.append(f"{ours['ppl'] / ours['ppl_optimal'] - 1:+.1%} vs optimum")
        if not parts:  # the budget ended before it (a reference number alone says nothing)
            lines.append((split, "not run"))
            continue
        lines.append((split, ", ".join(parts) + (f"  ({'; '.join(refs)})" if refs else "")))
    timing = record.get("timing") or {}
    if timing:
        kind = KINDS.get(record.get("task") or "")
        item = kind.item if kind else "items"
        lines.append(
            (
                "speed",
                f"{timing['items_per_s']:,.0f} {item}/s over "
                f"{timing['steps']} steps ({timing['train_s']:.1f} s training)"
                + (
                    f", one of {timing['packed']} trained together in that time"
                    if timing.get("packed")
                    else ""
                ),
            )
        )
    resume = record.get("resume")
    if resume:
        where = f" of {record['resumed_from']}" if record.get("resumed_from") else ""
        exact = "exact" if resume.get("exact") else "not exact: see the note"
        lines.append(
            ("resumed", f"from epoch {resume['epoch']}, step {resume['step']}{where} ({exact})")
        )
    packed = record.get("packed_with")
    if packed:
        lines.append(
            ("packed", f"member {packed['index'] + 1} of {packed['size']}, in {packed['pack']}")
        )
    for note in record.get("notes") or []:
        lines.append(("note", note))
    lines.append(("result", str(Path(record["run_dir"]) / RECORD_FILE)))
    if record.get("wandb"):
        run = record["wandb"]
        lines.append(("wandb", f"{run['mode']} run {run['id']} in {run['dir']}"))
        if run["mode"] == "offline":  # W&B itself prints nothing (settings.silent)
            lines.append(("", f"upload it: wandb sync {run['dir']}"))
    width = max(len(k) for k, _ in lines)
    bar = "-" * 72
    return "\n".join([bar, *(f"{k:<{width}}  {v}" for k, v in lines), bar])


MEMBERS_SHOWN = 10  # a pack's summary lists this many members; rnnbench-table shows them all


def format_pack_summary(records: list[dict[str, Any]]) -> str:
    """One summary for a pack's members: what they share, then a line per member (its seed,
    status and headline metric), the first MEMBERS_SHOWN of them."""

    first = records[0]
    model, pack = first["config"]["model"], first["packed_with"]
    headline = first.get("headline") or "test/loss"
    statuses = Counter(r["status"] for r in records)
    timing = first.get("timing") or {}
    lines = [
        ("pack", f"{len(records)} runs trained together in {pack['pack']}"),
        ("status", ", ".join(f"{n} {status}" for status, n in statuses.items())),
        ("dataset", first["config"]["data"]["name"]),
        ("model", f"{model['cell']}, {model['num_layers']} x {model['hidden_size']}"),
    ]
    if timing:
        lines.append(("speed", f"{timing['steps']} steps in {timing['train_s']:.1f} s"))
    width = max(len(k) for k, _ in lines)
    table = [f"{'seed':>10}  {'status':<11}  {headline}"]
    for r in records[:MEMBERS_SHOWN]:
        value = r["metrics"].get(headline)
        table.append(f"{r['seed']!s:>10}  {r['status']:<11}  {_fmt(value) if value else '-'}")
    if len(records) > MEMBERS_SHOWN:
        table.append(f"... and {len(records) - MEMBERS_SHOWN} more: rnnbench-table {pack['pack']}")
    logged = [r["wandb"] for r in records if r.get("wandb")]
    if logged:
        runs = f"{len(logged)} {logged[0]['mode']} W&B runs, one in each member's folder"
        table.append(f"{'wandb':<{width}}  {runs} (e.g. {logged[0]['dir']})")
    bar = "-" * 72
    return "\n".join([bar, *(f"{k:<{width}}  {v}" for k, v in lines), *table, bar])


def show(text: str) -> None:
    """Print `text` and write it to the run's log file (Hydra's job log, <run>/train.log), so
    the folder keeps what the console said at the end of the run."""
    print(text, flush=True)
    # The log file only: through the root logger the text would reach the console twice.
    entry = logging.LogRecord("rnnbench", logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(entry)
