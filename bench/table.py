"""One markdown table from several accuracy runs: Dice / HD95 (mm) per organ (over the cases that annotate it), box
metrics from the masks, iterations and seconds per iteration, one column per run.

    python bench/table.py NAME=RESULT [NAME=RESULT ...]

RESULT is an ``accuracy_<tag>.json`` written by ``bench/accuracy.py``, or a ``summary.json`` written by
``autoorgan_evaluate`` (e.g. for the nnU-Net baseline's validation folder; then iterations and timing are read from
a ``NAME.iterations=N`` / ``NAME.seconds_per_iteration=S`` argument when given).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def load(path: Path) -> dict:
    rec = json.loads(path.read_text())
    if "metrics" in rec:
        return {"metrics": rec["metrics"], "iterations": rec.get("iterations"),
                "seconds_per_iteration": rec.get("seconds_per_iteration"),
                "prediction_seconds": rec.get("prediction_seconds")}
    return {"metrics": rec}


def table(runs: dict[str, dict]) -> str:
    names = list(runs)
    organs: list[str] = []
    for r in runs.values():
        for organ in r["metrics"].get("masks", {}).get("per_class", {}):
            if organ not in organs:
                organs.append(organ)
    lines = ["| organ (n) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for organ in organs:
        n = next((r["metrics"]["masks"]["per_class"][organ]["num_cases"] for r in runs.values()
                  if organ in r["metrics"].get("masks", {}).get("per_class", {})), "?")
        cells = []
        for r in runs.values():
            v = r["metrics"].get("masks", {}).get("per_class", {}).get(organ)
            cells.append(f"{_fmt(v['Dice'])} / {_fmt(v['HD95'], 1)}" if v else "-")
        lines.append(f"| {organ} ({n}) | " + " | ".join(cells) + " |")

    def row(label: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(get(r) for r in runs.values()) + " |")

    row("**mean Dice / HD95**", lambda r: f"**{_fmt(r['metrics'].get('masks', {}).get('mean_Dice'))} / "
                                          f"{_fmt(r['metrics'].get('masks', {}).get('mean_HD95'), 1)}**")
    for key, label in (("mAP", "box mAP_coco"), ("AP50", "box AP50"), ("AP75", "box AP75"), ("mAR", "box mAR"),
                       ("mean_IoU", "box mean IoU")):
        row(label, lambda r, k=key: _fmt(r["metrics"].get("boxes", {}).get(k)))
    row("iterations", lambda r: str(r.get("iterations") or "-"))
    row("s / iteration", lambda r: _fmt(r.get("seconds_per_iteration"), 2))
    row("prediction s (all cases)", lambda r: _fmt(r.get("prediction_seconds"), 0))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    runs: dict[str, dict] = {}
    extras: dict[tuple[str, str], float] = {}
    for arg in (sys.argv[1:] if argv is None else argv):
        key, _, value = arg.partition("=")
        if not value:
            sys.exit(f"argument {arg!r}: expected NAME=RESULT")
        if "." in key and key.rsplit(".", 1)[1] in ("iterations", "seconds_per_iteration", "prediction_seconds"):
            name, field = key.rsplit(".", 1)
            extras[(name, field)] = float(value)
        else:
            runs[key] = load(Path(value))
    for (name, field), value in extras.items():
        if name not in runs:
            sys.exit(f"{name}.{field}: no run named {name}")
        runs[name][field] = int(value) if field == "iterations" else value
    if not runs:
        sys.exit(__doc__)
    print(table(runs))


if __name__ == "__main__":
    main()
