"""The one-screen summary printed at the end of a run, read from its record."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


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
            f"{model['cell']} ({model['impl']}), {model['num_layers']} x "
            f"{model['hidden_size']}, {direction}",
        ),
        ("parameters", f"{record['params']:,}" if record["params"] else "?"),
        ("clip", config["trainer"].get("gradient_clip_val")),
    ]
    for split in ("val", "test"):
        parts = [
            f"{k.split('/')[1]} {_fmt(metrics[k])}"
            for k in (f"{split}/loss", f"{split}/ppl", f"{split}/bpc", f"{split}/ppl_optimal")
            if k in metrics
        ]
        if f"{split}/ppl" in metrics and f"{split}/ppl_optimal" in metrics:
            gap = metrics[f"{split}/ppl"] / metrics[f"{split}/ppl_optimal"] - 1
            parts.append(f"({gap:+.1%} vs optimum)")
        lines.append((split, ", ".join(parts) or "-"))
    timing = record.get("timing") or {}
    if timing:
        lines.append(
            (
                "speed",
                f"{timing['items_per_s']:,.0f} tokens/s over "
                f"{timing['steps']} steps ({timing['train_s']:.1f} s training)",
            )
        )
    lines.append(("result", f"{record['run_dir']}/result.json"))
    if record.get("wandb"):
        lines.append(
            (
                "wandb",
                f"{record['wandb']['mode']} run {record['wandb']['id']} in "
                f"{record['wandb']['dir']}",
            )
        )
    width = max(len(k) for k, _ in lines)
    bar = "-" * 72
    return "\n".join([bar, *(f"{k:<{width}}  {v}" for k, v in lines), bar])
