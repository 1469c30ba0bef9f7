"""Write small experiment files for tests and run them on the tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

SMALL_EVAL = {"max_examples": 4, "max_tokens": 16, "batch_size": 4, "decode_tokens": 2}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_experiment(path: Path, kind: str, tables: dict, **top) -> Path:
    lines = [f'kind = "{kind}"'] + [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    tables = {**({} if kind == "modality" else {"eval": dict(SMALL_EVAL)}), **tables}  # modality reads no [eval]
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_rows(out_dir: Path) -> list[dict]:
    return json.loads((out_dir / "metrics.json").read_text())["rows"]
