"""Results on disk: metrics.json, metrics.csv, results.md (a markdown table), config.json (resolved)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

RANDOM_WEIGHTS_NOTE = ("\n**Made on RANDOM weights (the demo checkpoint, or one derived from it): the numbers only "
                       "show that the machinery works; they say nothing about the real model.**\n\n")


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _cell(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        s = ",".join(str(x) for x in v)
        return s if len(s) <= 40 else s[:37] + "..."
    return str(v)


def markdown_table(rows: list[dict], cols: list[str] | None = None) -> str:
    cols = cols or [c for c in columns(rows) if not isinstance(rows[0].get(c), (dict,))]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def write_results(out_dir: Path, spec: dict, rows: list[dict], extra: dict | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [_plain(r) for r in rows]
    paths = {"config": out_dir / "config.json", "json": out_dir / "metrics.json", "csv": out_dir / "metrics.csv",
             "markdown": out_dir / "results.md"}
    paths["config"].write_text(json.dumps(_plain(spec), indent=2, ensure_ascii=False) + "\n")
    paths["json"].write_text(json.dumps({"experiment": spec["name"], "rows": rows, **_plain(extra or {})},
                                        indent=2, ensure_ascii=False) + "\n")
    cols = [c for c in columns(rows) if not any(isinstance(r.get(c), (dict, list)) for r in rows)]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    plots = sorted((out_dir / "plots").glob("*.png")) if (out_dir / "plots").is_dir() else []
    md = [f"# {spec['name']}\n",
          RANDOM_WEIGHTS_NOTE if spec.get("random_weights") else "",
          spec.get("description", "").strip() + "\n" if spec.get("description") else "",
          f"checkpoint: `{spec.get('checkpoint')}` · kind: `{spec['kind']}` · seed: {spec['seed']}\n\n",
          markdown_table(rows, cols) if rows else "(no rows)\n"]
    md += [f"\n![{p.stem}](plots/{p.name})\n" for p in plots]
    paths["markdown"].write_text("".join(md))
    return paths
