"""What the whole Table 1 costs: the wall time of every results cell, summed per row and dataset.

Reads the cells ``python -m mamo_lite reproduce table1`` wrote (``results/table1/<dataset>/<row>/seed<k>.json``,
each with the seconds it took and the device and versions it ran on) and prints a table of seconds per
row × dataset, the grid searches included (``grid.json`` files carry no timing, so they are counted from
their grid tables where those record seconds). Writes the figures to ``bench/results/table1-<device>.json``.

    python bench/table1_cost.py [results/table1]

The seconds are what each cell took where it ran: compare them only with figures from the same machine
and the same load (the JSON names the CPU and whether other work shared it is not knowable afterwards).
To time the table on a GPU, run ``reproduce table1 --device cuda --out results/table1-gpu`` and point
this script at that folder.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else ROOT / "results" / "table1"
    cells = sorted(folder.glob("*/*/seed*.json"))
    if not cells:
        print(f"no cells under {folder}; run `python -m mamo_lite reproduce table1` first", file=sys.stderr)
        return 1
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    devices, cpus = set(), set()
    for path in cells:
        cell = json.loads(path.read_text(encoding="utf-8"))
        key = (cell["row"], cell["dataset"])
        seconds[key] += float(cell["info"].get("seconds") or 0.0)
        counts[key] += 1
        prov = cell.get("provenance", {})
        devices.add(prov.get("device"))
        cpus.add(prov.get("versions", {}).get("device_name"))
    for path in sorted(folder.glob("*/*/grid.json")):
        grid = json.loads(path.read_text(encoding="utf-8"))
        spent = sum(float(g.get("seconds") or 0.0) for g in grid.get("grid", []))
        seconds[(grid["row"] + " (grid search)", grid["dataset"])] += spent
    datasets = sorted({d for _, d in seconds})
    rows = sorted({r for r, _ in seconds})
    width = max(len(r) for r in rows)
    print(f"{'row':<{width}}  " + "  ".join(f"{d:>16}" for d in datasets))
    for r in rows:
        print(f"{r:<{width}}  " + "  ".join(
            f"{seconds.get((r, d), 0.0):>10.0f} s ({counts.get((r, d), 0)})" if (r, d) in seconds else f"{'':>16}"
            for d in datasets))
    total = sum(seconds.values())
    print(f"\ntotal: {total:.0f} s ({total / 3600:.2f} h) over {len(cells)} cells; devices {sorted(map(str, devices))}; "
          f"CPU {sorted(map(str, cpus))}")
    out = ROOT / "bench" / "results" / f"table1-{'-'.join(sorted(map(str, devices)))}.json"
    out.write_text(json.dumps({
        "source": str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder),
        "cells": len(cells), "total_seconds": total, "devices": sorted(map(str, devices)),
        "cpus": sorted(map(str, cpus)),
        "seconds": [{"row": r, "dataset": d, "seconds": s, "cells": counts.get((r, d), 0)}
                    for (r, d), s in sorted(seconds.items())]}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
