"""Data pipeline timings: raw files → processed ``ColdStartData``, and the cached load.

For every dataset whose files are present (nothing is downloaded) and the synthetic one, times the
median of ``--repeats`` runs of

* ``hash``: sha256 of every raw file from scratch (what a first ``ensure_files`` costs);
* ``verify``: ``registry.ensure_files`` as every later load runs it (digests memoised by the registry);
* ``parse``: the parser, raw files → ``RawTables``;
* ``protocol``: ``ColdStartData.from_raw`` (trim, warm/cold labels, split, encoding);
* ``raw→processed``: ``load(..., cache=False)``, the three above together;
* ``cached load``: ``load`` from a warm processed-data cache (a temporary folder);
* ``tasks(all)``: building the padded ``TaskBatch`` of every kept user.

Targets (2 CPU cores): ML-1M raw → processed < 10 s, cached load < 1 s.

    MAMO_LITE_DATA=../shared/data python bench/bench_data.py
    python bench/bench_data.py --data-dir ../shared/data --repeats 5 --out /tmp/data.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mamo_lite.data import ColdStartData, load, registry
from mamo_lite.data.download import file_digests
from mamo_lite.data.errors import DataError
from mamo_lite.data.parsers import PARSERS
from mamo_lite.utils import atomic_write_text, versions

ROOT = Path(__file__).resolve().parent
DATASETS = ("movielens-1m", "movielens-100k", "book-crossing", "synthetic")


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench(name: str, data_dir: str | None, repeats: int) -> dict:
    row: dict = {"dataset": name}
    if name == "synthetic":
        row.update(release="synthetic", sha256={})
    else:
        t, files = median_time(lambda: registry.ensure_files(name, data_dir, download=False), repeats)
        row.update(release=files.release, sha256=files.sha256, verify_s=t)
        row["hash_s"], _ = median_time(
            lambda: [file_digests(p, memo=False) for p in files.paths.values()], repeats)
        t, raw = median_time(lambda: PARSERS[name](files.paths, release=files.release,
                                                   provenance=files.provenance()), repeats)
        row["parse_s"] = t
        t, _ = median_time(lambda: ColdStartData.from_raw(raw), repeats)
        row["protocol_s"] = t
    t, data = median_time(lambda: load(name, data_dir, download=False, cache=False), repeats)
    row["raw_to_processed_s"] = t
    with tempfile.TemporaryDirectory() as cache:
        load(name, data_dir, download=False, cache=cache)
        row["cached_load_s"], _ = median_time(
            lambda: load(name, data_dir, download=False, cache=cache), repeats)
    data._task_cache.clear()
    row["tasks_all_s"], _ = median_time(lambda: (data._task_cache.clear(), data.tasks("all")), repeats)
    c = data.provenance["counts"]
    row["counts"] = {k: c[k] for k in
                     ("ratings_in_files", "users_kept", "users_cold", "items_kept", "items_cold")}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="data root (default: $MAMO_LITE_DATA, then the cache)")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated names")
    ap.add_argument("--repeats", type=int, default=3, help="runs per timing; the median is reported")
    ap.add_argument("--out", default=str(ROOT / "results" / "data.json"), help="JSON output path")
    args = ap.parse_args(argv)

    rows, skipped = [], {}
    for name in args.datasets.split(","):
        try:
            rows.append(bench(name.strip(), args.data_dir, args.repeats))
        except DataError as e:
            skipped[name] = str(e).splitlines()[0]
            print(f"skip {name}: {skipped[name]}", file=sys.stderr)

    cols = ("hash_s", "verify_s", "parse_s", "protocol_s", "raw_to_processed_s", "cached_load_s",
            "tasks_all_s")
    print(f"{'dataset':<16}{'release':<11}" + "".join(f"{c.removesuffix('_s'):>17}" for c in cols))
    for r in rows:
        cells = "".join(f"{r[c]:>16.3f}s" if c in r else f"{'–':>17}" for c in cols)
        print(f"{r['dataset']:<16}{r['release']:<11}{cells}")
    result = {"benchmark": "data pipeline", "repeats": args.repeats, "statistic": "median seconds",
              "machine": versions("cpu"), "results": rows, "skipped": skipped}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
