"""Chapter 6: minority and majority users, per method, dataset, protocol and seed, as resumable result files.

GreatMeta's abstract (Du et al. 2025) claims that uniform meta-training favours the majority preference
and hurts minority cold users. :func:`groups_study` measures it: for each (method, dataset, protocol,
seed) *cell* it trains the method exactly as a Table-1 cell (:func:`mamo_lite.reproduce.cell_predictions`
on data loaded under the protocol: epochs chosen on validation users, never the test users), predicts the
test users, labels them ``majority`` / ``minority`` from ratings alone and reports MAE and NDCG@3 per
group.

**Groups** (:mod:`mamo_lite.groups`, model-free, so every method is judged on the same users). Each
evaluated test user is described by their *support* ratings against the *training* users
(:func:`mamo_lite.groups.profiles`'s defaults: what is known about a cold user when they are scored);
two groupings, each by :func:`mamo_lite.groups.label_groups` with the minority the ``quantile`` (default
20 %) of evaluated users farthest from the population:

* ``taste``: :func:`mamo_lite.groups.taste_distance` (which items a user likes more than others do);
* ``histogram``: :func:`mamo_lite.groups.histogram_distance` (how a user uses the rating scale).

A user with no comparable item is ``unscored`` (kept in the ``all`` group). The labels depend on the
dataset, protocol, seed and test-user subset only, so they are the same for every method of a cell.

**Protocols** (:data:`PROTOCOLS`): ``"mamo"``, MAMO's four-scenario protocol; ``"greatmeta"``,
GreatMeta's own (:class:`~mamo_lite.data.protocol.GreatMetaProtocol`: user cold-start only, 10 random
query ratings, the rest support). On Book-Crossing the latter uses the authors' Book-Crossing settings
(users with 13–100 ratings, users split 80/10/10, ``GreatMeta-BK.yaml``) [decision: their 40–200
MovieLens window would keep only Book-Crossing's heaviest raters]. Ratings stay on each dataset's own
scale (the authors' code reports ML-100K on [0, 1]; multiply its MAE by 4 to compare).

**Methods** (:data:`METHODS`): the Table-1 rows MAML (ρ chosen on validation users, once per dataset and
protocol, stored in ``grid.json`` beside the cells), MeLU, MAMO and GreatMeta; five GreatMeta variants are
offered: ``GreatMeta (query FiLM)`` (the FiLM encoder conditioned on the rows being predicted, as coded,
against ours on the support rows), ``GreatMeta (as coded)`` (every departure of the authors' code that
``mamo_lite`` offers as an option, Errata 1–4 and 6 of :mod:`mamo_lite.methods.greatmeta`),
``GreatMeta (uniform)`` (no scheduler, the ablation that isolates it) and ``GreatMeta (held-out
look-ahead)`` (the scheduler trained on other users' queries) and ``GreatMeta (no encoder)`` (the same
predictor without the FiLM encoder, the ablation of the abstract's "personalized encoder"). The trivial baselines (global median, item
mean, user support mean) run with them, so that a group which is hard for every model shows as such.

**Files**: ``<out>/<protocol>/<dataset>/<method>/seed<k>.json``, one per cell, written atomically. Each
holds a *key* (protocol and its settings, dataset identity, method configuration, budget, seed, grouping
rule): a finished cell with the same key is read back, never recomputed. A cell holds the tidy scenario
rows of all test users (as a Table-1 cell), the per-group metrics (``groups``: user means, Eq. 13, by
:func:`mamo_lite.groups.group_metrics`; ``group_scenarios``: each group's scenario table by
:func:`mamo_lite.evaluate.scenario_metrics`), every evaluated user's metrics, distances and labels
(``per_user``), what the run did (``info``) and where the numbers come from (``provenance``).
:func:`load_groups` reads a folder back as tidy frames.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mamo_lite.data.protocol import GreatMetaProtocol
from mamo_lite.evaluate import COLUMNS, per_user_metrics, scenario_metrics
from mamo_lite.groups import GROUPS, group_metrics, label_groups, profiles
from mamo_lite.reproduce import (
    BUDGETS,
    ROWS,
    Budget,
    Row,
    _budget_identity,
    _commit,
    _data_identity,
    _row_identity,
    cell_predictions,
    payload_key,
    resolve_budget,
    slug,
    tune,
)
from mamo_lite.utils import atomic_write_text, json_safe, progress, resolve_device, versions

__all__ = ["DATASETS", "DEFAULT_METHODS", "GREATMETA_AS_CODED", "GROUPINGS", "GROUP_COLUMNS", "METHODS",
           "PER_USER_COLUMNS", "PROTOCOLS", "STUDY_BUDGETS", "from_table1", "group_intervals", "group_table",
           "groups_cell", "groups_study", "label_test_users", "load_groups", "method_label", "protocol_for"]

DEFAULT_OUT = Path("results") / "groups"
DATASETS: tuple[str, ...] = ("movielens-1m", "book-crossing", "movielens-100k")
"""The study's datasets (the issue's three), in the order they are computed."""
PROTOCOLS: tuple[str, ...] = ("mamo", "greatmeta")
"""The protocols by name: MAMO's (four scenarios) and GreatMeta's (user cold-start only); :func:`protocol_for`."""
GROUPINGS: dict[str, str] = {"taste": "taste_distance", "histogram": "histogram_distance"}
"""Grouping name → the distance column of :func:`mamo_lite.groups.profiles` it thresholds (high = minority)."""

GREATMETA_AS_CODED = {"conditioning": "query", "lookahead": "sgd", "gradients": "aliased", "inner_steps": 3,
                      "eval_adapts": "all"}
"""The overrides of the ``GreatMeta (as coded)`` row: the departures of the authors' code that
:mod:`mamo_lite.methods.greatmeta` offers as options (Errata 1–4 and 6; ρ, the rates and the batch size
are the code's in every GreatMeta row). The code's zero output bias is left out: on a 1–5 scale it puts
every prediction below the lowest rating, and at the code's rates (ρ = 5e-6, Adam 5e-5) a short run
scores exactly as "predict 1 everywhere" (measured on ML-100K with the smoke budget)."""

METHODS: dict[str, Row] = {
    "MAML": ROWS["MAML"],
    "MeLU": ROWS["MeLU"],
    "MAMO": ROWS["MAMO"],
    "GreatMeta": ROWS["GreatMeta"],
    "GreatMeta (query FiLM)": Row("meta", "greatmeta", {"conditioning": "query"},
                                  note="the FiLM encoder reads the rows being predicted (as coded)"),
    "GreatMeta (as coded)": Row("meta", "greatmeta", GREATMETA_AS_CODED,
                                note="query FiLM, SGD look-ahead, aliased gradients, 3 steps, all tensors "
                                     "adapted at test"),
    "GreatMeta (uniform)": Row("meta", "greatmeta", {"weighting": "uniform"},
                               note="no scheduler: every user of a batch weighs 1/B (the ablation of the scheduler)"),
    "GreatMeta (held-out look-ahead)": Row("meta", "greatmeta", {"lookahead_users": "held-out"},
                                           note="the scheduler's look-ahead scored on the other half of the batch"),
    "GreatMeta (no encoder)": Row("meta", "greatmeta", {"encoder": "none"},
                                  note="the same predictor without the personalised FiLM encoder (its ablation)"),
}
"""The study's methods by label: the issue's four, the GreatMeta variants (optional) and the trivial
baselines (added below)."""
for _trivial in ("global median", "item mean", "user support mean"):  # the trivial baselines of every comparison
    METHODS[_trivial] = ROWS[_trivial]
DEFAULT_METHODS: tuple[str, ...] = ("MAML", "MeLU", "MAMO", "GreatMeta", "global median", "item mean",
                                    "user support mean")
"""The methods :func:`groups_study` runs unless told otherwise: the issue's four meta-learners and the three
trivial baselines (seconds), so that a group that is hard for every model is visible as such."""

PER_USER_COLUMNS: tuple[str, ...] = (
    "user", "user_cold", "MAE", "RMSE", "NDCG@3", "n", "n_support", "mean_support", "taste_distance", "taste_items",
    "histogram_distance", *(f"group_{g}" for g in GROUPINGS))
"""Columns of a cell's ``per_user`` table: :func:`mamo_lite.evaluate.per_user_metrics`, then
:func:`label_test_users`."""

_CELL_KEYS = ("protocol", "dataset", "method", "seed")
GROUP_COLUMNS: tuple[str, ...] = (*_CELL_KEYS, "grouping", "group", "metric", "value", "users", "ratings")
"""Columns of the tidy per-group frame of :func:`load_groups` and :func:`from_table1`."""

STUDY_BUDGETS: dict[str, Budget] = {"smoke": BUDGETS["smoke"], "book": BUDGETS["book"]}
"""``smoke`` (a few dozen users, 2 epochs: tests and checks) and ``book`` (all users, patience 3)."""


# -- names ------------------------------------------------------------------------------------------------

def method_label(name: str) -> str:
    """The :data:`METHODS` label for ``name``, given as a label or its file-name slug, any case
    (``"greatmeta-as-coded"`` → ``"GreatMeta (as coded)"``)."""
    if not isinstance(name, str):
        raise ValueError(f"a method must be a name, one of {list(METHODS)}, got {name!r}")  # noqa: TRY004
    by_slug = {slug(label): label for label in METHODS}
    by_lower = {label.lower(): label for label in METHODS}
    found = by_lower.get(name.strip().lower()) or by_slug.get(slug(name))
    if found is None:
        raise ValueError(f"unknown method {name!r}; choose from {list(METHODS)} (or their slugs "
                         f"{list(by_slug)})")
    return found


def protocol_for(protocol: str, dataset: str):
    """The protocol object the study uses for ``dataset`` under the name ``protocol`` (module docstring):
    ``None`` for MAMO's (the dataset's defaults), :class:`~mamo_lite.data.protocol.GreatMetaProtocol` for
    GreatMeta's, with the authors' Book-Crossing settings on ``book-crossing``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}")
    if protocol == "mamo":
        return None
    if dataset == "book-crossing":
        return GreatMetaProtocol(min_ratings=13, max_ratings=100, split_ratios=(0.8, 0.1, 0.1))
    return GreatMetaProtocol()


def _budget(budget: Budget | str) -> Budget:
    return resolve_budget(budget, STUDY_BUDGETS)


def _check_quantile(quantile: float) -> None:
    ok = isinstance(quantile, int | float) and not isinstance(quantile, bool) and 0.0 < quantile < 0.5
    if not ok:
        raise ValueError(f"quantile must be the minority's share, a number in (0, 0.5) such as 0.2, got {quantile!r}")


# -- one cell -----------------------------------------------------------------------------------------------

def label_test_users(data, users: Iterable[int], *, quantile: float = 0.2) -> pd.DataFrame:
    """The evaluated test ``users``' distances and group labels, one row per user in ``users``' order.

    Columns: ``user, n_support, mean_support, taste_distance, taste_items, histogram_distance`` (from
    :func:`mamo_lite.groups.profiles`: support ratings against the training users) and ``group_<name>``
    for each grouping of :data:`GROUPINGS` (thresholds over ``users`` only).
    """
    _check_quantile(quantile)
    users = np.asarray(list(users))
    table = profiles(data, "test").set_index("user").reindex(users)
    missing = table["n_ratings"].isna()
    if missing.any():
        raise ValueError(f"user {int(users[missing.to_numpy()][0])} has no support rating among the test users "
                         f"of {data.name}: label_test_users labels test users only")
    out = pd.DataFrame({"user": users, "n_support": table["n_ratings"].to_numpy(dtype="int64"),
                        "mean_support": table["mean_rating"].to_numpy(dtype=float),
                        "taste_distance": table["taste_distance"].to_numpy(dtype=float),
                        "taste_items": table["taste_items"].to_numpy(dtype="int64"),
                        "histogram_distance": table["histogram_distance"].to_numpy(dtype=float)})
    for name, column in GROUPINGS.items():
        out[f"group_{name}"] = label_groups(out, column, quantile=quantile)["group"].to_numpy()
    return out


def _group_scenarios(pred: torch.Tensor, test, labels: pd.DataFrame, label: str, dataset: str, seed: int,
                     spec) -> list[dict]:
    """Each grouping × group's scenario table (:func:`scenario_metrics` on the group's users)."""
    rows = []
    users = test.user_ids.cpu().numpy()
    for name in GROUPINGS:
        groups = labels.set_index("user")[f"group_{name}"].reindex(users).to_numpy()
        for group in (*GROUPS, "all"):
            sel = np.ones(len(users), dtype=bool) if group == "all" else groups == group
            if not sel.any():
                continue
            idx = torch.from_numpy(np.nonzero(sel)[0])
            table = scenario_metrics(pred.cpu()[idx], test.select(idx).to("cpu"), method=label, dataset=dataset,
                                     seed=seed, rating_range=spec)
            rows += table.assign(grouping=name, group=group).to_dict(orient="records")
    return rows


def _grouped_metrics(users: pd.DataFrame, label: str, dataset: str, seed: int,
                     metrics: list[str]) -> list[pd.DataFrame]:
    """:func:`mamo_lite.groups.group_metrics` of labelled per-user rows, one frame per grouping of :data:`GROUPINGS`."""
    return [group_metrics(users.assign(method=label, dataset=dataset, seed=seed),
                          users[["user", f"group_{name}"]].rename(columns={f"group_{name}": "group"}),
                          metrics=metrics).assign(grouping=name)
            for name in GROUPINGS]


def groups_cell(label: str, dataset: str, protocol: str, seed: int, budget: Budget | str = "smoke", *, data,
                device: str | torch.device = "cpu", chosen: dict[str, Any] | None = None,
                quantile: float = 0.2) -> dict:
    """Compute one cell (module docstring): ``{"rows", "groups", "group_scenarios", "per_user", "info"}``.

    ``data``: the dataset loaded under ``protocol`` for ``seed``; ``chosen``: MAML's validated ρ (its
    row's grid). A run that diverged before a healthy epoch has empty metric lists and ``info["diverged"]``.
    """
    budget = _budget(budget)
    label = method_label(label)
    pred, test, data, info = cell_predictions(label, dataset, seed, budget, data=data, device=device,
                                              chosen=chosen, row=METHODS[label])
    info = {**info, "chosen": chosen or {}}
    if pred is None:
        return {"rows": [], "groups": [], "group_scenarios": [], "per_user": {}, "info": json_safe(info)}
    pred = pred.detach().cpu()
    test = test.to("cpu")
    labels = label_test_users(data, test.user_ids.numpy(), quantile=quantile)
    users = per_user_metrics(pred, test, rating_range=data.spec).merge(labels, on="user", how="left")
    tidy = _grouped_metrics(users, label, dataset, seed, ["MAE", "RMSE", "NDCG@3"])
    rows = scenario_metrics(pred, test, method=label, dataset=dataset, seed=seed, rating_range=data.spec)
    return json_safe({"rows": rows.to_dict(orient="records"),
                      "groups": pd.concat(tidy, ignore_index=True).to_dict(orient="records"),
                      "group_scenarios": _group_scenarios(pred, test, labels, label, dataset, seed, data.spec),
                      "per_user": {c: users[c].round(6).tolist() if users[c].dtype.kind == "f" else users[c].tolist()
                                   for c in users.columns}, "info": info})


_key = payload_key


def _read(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stored if stored.get("key") == key else None


def _protocol_spec(data) -> dict:
    """The data's protocol as a dict with its ``kind`` (MAMO's ``Protocol.to_dict`` has none)."""
    return {"kind": "greatmeta" if isinstance(data.protocol, GreatMetaProtocol) else "mamo",
            **data.protocol.to_dict()}


def _provenance(device, data, budget: Budget) -> dict:
    return {**_commit(), "device": str(device), "versions": versions(device), "data": _data_identity(data),
            "protocol": _protocol_spec(data), "budget": asdict(budget)}


def _tuned(label: str, dataset: str, protocol: str, budget: Budget, out: Path, loader, device) -> dict[str, Any]:
    """The row's grid values chosen on seed 0's validation users under ``protocol``, kept in ``grid.json``."""
    row = METHODS[label]
    data = loader(dataset, seed=0, protocol=protocol_for(protocol, dataset))
    key = _key({"study": "groups-grid", "row": _row_identity(row), "budget": _budget_identity(row, budget),
                "protocol": protocol, "protocol_spec": _protocol_spec(data), "data": _data_identity(data)})
    path = out / protocol / dataset / slug(label) / "grid.json"
    stored = _read(path, key)
    if stored is not None:
        return stored["chosen"]
    chosen, table = tune(label, dataset, budget, data, device=device)
    atomic_write_text(path, json.dumps(json_safe({
        "key": key, "method": label, "dataset": dataset, "protocol": protocol, "chosen": chosen, "grid": table,
        "selected_on": "validation users of seed 0's split (best validation MAE; diverged points excluded)",
        "provenance": _provenance(device, data, budget)}), indent=1, sort_keys=True))
    return chosen


# -- the study ----------------------------------------------------------------------------------------------

def groups_study(methods: Iterable[str] = DEFAULT_METHODS, datasets: Iterable[str] = DATASETS,
                 protocols: Iterable[str] = PROTOCOLS, seeds: Iterable[int] = range(5),
                 budget: Budget | str = "book", *, out: str | Path = DEFAULT_OUT, quantile: float = 0.2,
                 device: str | torch.device = "cpu", show_progress: bool | None = None,
                 loader: Callable[..., Any] | None = None) -> pd.DataFrame:
    """Every (protocol × dataset × seed × method) cell into ``out`` (module docstring); returns the tidy
    per-group rows of these cells (:func:`load_groups`'s ``groups`` frame, restricted to them).

    ``loader(dataset, seed=, protocol=)`` loads a dataset (default :func:`mamo_lite.data.dataset.load`); the
    protocol it gets is :func:`protocol_for`'s. Cells are computed dataset by dataset, one split in memory
    at a time; finished cells with the same key are read back.
    """
    from mamo_lite.data import load
    from mamo_lite.data.dataset import DATASETS as KNOWN

    loader = loader or load
    _commit()  # the checkout as this run found it (cached for every cell)
    budget = _budget(budget)
    labels = [method_label(m) for m in methods]
    datasets, protocols, seeds = list(datasets), list(protocols), list(seeds)
    for name, values, valid in (("datasets", datasets, KNOWN), ("protocols", protocols, PROTOCOLS)):
        bad = [v for v in values if v not in valid]
        if bad or not values:
            raise ValueError(f"{name} must name at least one of {list(valid)}, got {bad or values}")
    if not labels or not seeds:
        raise ValueError(f"nothing to run: methods={labels}, seeds={seeds}")
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad:
        raise ValueError(f"seeds must be non-negative integers, got {bad}")
    _check_quantile(quantile)
    out, dev = Path(out), resolve_device(device)
    cells = [(p, d, s, m) for p in protocols for d in datasets for s in seeds for m in labels]
    bar = progress(total=len(cells), enabled=show_progress, desc="groups", unit="cell")
    done, cache, tuned = [], {}, {}
    try:
        for protocol, dataset, seed, label in cells:
            if (protocol, dataset, seed) not in cache:
                cache = {(protocol, dataset, seed): loader(dataset, seed=seed,
                                                           protocol=protocol_for(protocol, dataset))}
            data = cache[(protocol, dataset, seed)]
            row = METHODS[label]
            chosen = None
            if row.grid:
                if (label, dataset, protocol) not in tuned:
                    tuned[(label, dataset, protocol)] = _tuned(label, dataset, protocol, budget, out, loader, dev)
                chosen = tuned[(label, dataset, protocol)]
            key = _key({"study": "groups", "protocol": protocol, "protocol_spec": _protocol_spec(data),
                        "dataset": dataset, "data": _data_identity(data), "row": _row_identity(row),
                        "budget": _budget_identity(row, budget), "seed": seed, "chosen": chosen or {},
                        "quantile": quantile, "groupings": GROUPINGS})
            path = out / protocol / dataset / slug(label) / f"seed{seed}.json"
            if _read(path, key) is None:
                started = time.perf_counter()
                result = groups_cell(label, dataset, protocol, seed, budget, data=data, device=dev, chosen=chosen,
                                     quantile=quantile)
                result["info"]["cell_seconds"] = time.perf_counter() - started
                cell = {"key": key, "method": label, "dataset": dataset, "protocol": protocol, "seed": seed,
                        "quantile": quantile, **result,
                        "provenance": {**_provenance(dev, data, budget), "row_spec": asdict(row)}}
                atomic_write_text(path, json.dumps(json_safe(cell), indent=1, sort_keys=True))
            done.append((protocol, dataset, label, seed))
            bar.update(1)
    finally:
        bar.close()
    frames = load_groups(out)["groups"]
    mine = pd.MultiIndex.from_frame(frames[["protocol", "dataset", "method", "seed"]]).isin(done)
    return frames[mine].reset_index(drop=True)


def load_groups(folder: str | Path = DEFAULT_OUT) -> dict[str, pd.DataFrame]:
    """Every stored cell under ``folder`` as tidy frames (each with ``protocol, dataset, method, seed``):

    * ``groups``: ``grouping, group, metric, value, users, ratings`` (user means per group, Eq. 13);
    * ``scenarios``: ``grouping, group, scenario, metric, value, n, ratings, users`` (each group's
      scenario table; group ``all`` is the cell's whole table);
    * ``per_user``: one row per evaluated user (metrics, distances, ``group_<grouping>`` labels);
    * ``runs``: ``best_epoch, epochs_run, diverged, seconds, chosen`` per cell.
    """
    folder = Path(folder)
    paths = sorted(folder.glob("*/*/*/seed*.json"))
    if not paths:
        raise FileNotFoundError(f"no cells (<protocol>/<dataset>/<method>/seed<k>.json) under {folder}; compute "
                                "them with `python -m mamo_lite reproduce groups`")
    groups, scenarios, per_user, runs = [], [], [], []
    for path in paths:
        c = json.loads(path.read_text(encoding="utf-8"))
        ident = {"protocol": c["protocol"], "dataset": c["dataset"], "method": c["method"], "seed": c["seed"]}
        groups += [{**r, **ident} for r in c["groups"]]
        scenarios += [{**r, **ident} for r in c["group_scenarios"]]
        if c["per_user"]:
            per_user.append(pd.DataFrame(c["per_user"]).assign(**ident))
        info = c.get("info", {})
        runs.append({**ident, **{k: info.get(k) for k in ("best_epoch", "epochs_run", "diverged", "seconds")},
                     "chosen": json.dumps(info.get("chosen") or {}, sort_keys=True)})
    keys = list(_CELL_KEYS)
    group_cols = list(GROUP_COLUMNS)
    scenario_cols = [*keys, "grouping", "group", *[c for c in COLUMNS if c not in ("method", "dataset", "seed")]]
    pu = pd.concat(per_user, ignore_index=True) if per_user else pd.DataFrame(columns=keys)
    return {"groups": pd.DataFrame(groups).reindex(columns=group_cols),
            "scenarios": pd.DataFrame(scenarios).reindex(columns=scenario_cols),
            "per_user": pu[[*keys, *PER_USER_COLUMNS, *sorted(set(pu.columns) - {*keys, *PER_USER_COLUMNS})]]
            if len(pu) else pu,
            "runs": pd.DataFrame(runs)}


def from_table1(folder: str | Path = Path("results") / "table1", *, methods: Iterable[str] | None = None,
                datasets: Iterable[str] | None = None, quantile: float = 0.2,
                loader: Callable[..., Any] | None = None) -> dict[str, pd.DataFrame]:
    """The ``mamo`` protocol's per-group results read off the Table-1 cells in ``folder``, without training.

    A Table-1 cell and a ``groups`` cell under MAMO's protocol train the same row on the same split with
    the same budget and seed (:func:`mamo_lite.reproduce.cell_predictions` both), and a Table-1 cell keeps
    every test user's MAE and NDCG@3 (``per_user``). Labelling those users (:func:`label_test_users`,
    model-free, from the dataset ``loader(dataset, seed=)`` loads, default :func:`mamo_lite.data.dataset.load`)
    gives the per-group rows without a second training run. ``methods`` (default: those of :data:`METHODS`
    whose Table-1 row is the study's row) and ``datasets`` (default: all in ``folder``) select cells.

    Returns ``{"groups", "per_user"}`` in :func:`load_groups`'s columns (``protocol="mamo"``; ``RMSE`` and
    the scenario tables need the predictions, which Table-1 cells do not keep, so they are absent).
    """
    from mamo_lite.data import load
    from mamo_lite.results import load_cells

    _check_quantile(quantile)
    loader = loader or load
    same = [m for m, row in METHODS.items() if ROWS.get(m) == row]
    labels = same if methods is None else [method_label(m) for m in methods]
    bad = [m for m in labels if m not in same]
    if bad:
        raise ValueError(f"{bad}: not a Table-1 row with the study's settings; choose from {same}")
    cells = load_cells(folder).per_user
    cells = cells[cells["method"].isin(labels)]
    if datasets is not None:
        cells = cells[cells["dataset"].isin(list(datasets))]
    keys = list(_CELL_KEYS)
    groups, per_user = [], []
    for (dataset, seed), part in cells.groupby(["dataset", "seed"], sort=True):
        data = loader(dataset, seed=int(seed))
        for method, users in part.groupby("method", sort=False):
            labels_ = label_test_users(data, users["user"].to_numpy(), quantile=quantile)
            merged = users.drop(columns=["method", "dataset", "seed"]).merge(labels_, on="user", how="left")
            ident = {"protocol": "mamo", "dataset": dataset, "method": method, "seed": int(seed)}
            per_user.append(merged.assign(**ident))
            groups += [t.assign(protocol="mamo")
                       for t in _grouped_metrics(merged, method, dataset, int(seed), ["MAE", "NDCG@3"])]
    if not groups:
        return {"groups": pd.DataFrame(columns=list(GROUP_COLUMNS)), "per_user": pd.DataFrame(columns=keys)}
    pu = pd.concat(per_user, ignore_index=True)
    return {"groups": pd.concat(groups, ignore_index=True).reindex(columns=list(GROUP_COLUMNS)),
            "per_user": pu[[*keys, *[c for c in pu.columns if c not in keys]]]}


# -- reading the study ----------------------------------------------------------------------------------------

def group_table(groups: pd.DataFrame, *, metric: str = "MAE", grouping: str = "taste") -> pd.DataFrame:
    """Per (protocol, dataset, method): the seeds' mean and standard deviation of ``metric`` for the
    ``majority``, ``minority`` and ``all`` users, and of the ``gap`` (minority − majority, per seed).

    ``groups``: :func:`load_groups`'s (or :func:`from_table1`'s) ``groups`` frame. Columns are a
    two-level index ``(group, statistic)`` with statistics ``mean``, ``std`` (over seeds, ``ddof=1``) and
    ``seeds``. A positive MAE gap means the minority is served worse.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {list(GROUPINGS)}, got {grouping!r}")
    sel = groups[(groups["metric"] == metric) & (groups["grouping"] == grouping)]
    if sel.empty:
        raise ValueError(f"no {metric!r} rows for grouping {grouping!r} (metrics present: "
                         f"{sorted(groups['metric'].unique())})")
    keys = ["protocol", "dataset", "method"]
    wide = sel.pivot_table(index=[*keys, "seed"], columns="group", values="value")
    wide = wide.reindex(columns=["majority", "minority", "all"])
    wide["gap"] = wide["minority"] - wide["majority"]
    stats = wide.groupby(level=keys).agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "seeds"}, level=1)


def group_intervals(per_user: pd.DataFrame, pairs: Iterable[tuple[str, str]], *, grouping: str = "taste",
                    group: str = "minority", metric: str = "MAE", confidence: float = 0.95,
                    n_resamples: int = 9999) -> pd.DataFrame:
    """Paired bootstrap intervals of ``a − b`` on one ``group``'s test users, per protocol and dataset.

    ``per_user``: :func:`load_groups`'s (or :func:`from_table1`'s) ``per_user`` frame; ``pairs``: ``(a, b)``
    method labels. The units are the (seed, user) pairs both methods scored
    (:func:`mamo_lite.results.paired_interval`, BCa); ``group="all"`` takes every user. Pairs missing
    from a (protocol, dataset) are skipped. Columns: ``protocol, dataset, a, b, group, metric, diff, low,
    high, units``; an MAE ``diff`` below 0 means ``a`` is better.
    """
    from mamo_lite.results import paired_interval

    column = f"group_{grouping}"
    if column not in per_user.columns:
        raise ValueError(f"per_user has no {column!r} column; groupings: {list(GROUPINGS)}")
    sel = per_user if group == "all" else per_user[per_user[column] == group]
    rows = []
    for (protocol, dataset), part in sel.groupby(["protocol", "dataset"], sort=True):
        have = set(part["method"])
        for a, b in pairs:
            if a not in have or b not in have:
                continue
            r = paired_interval(part, a, b, metric, dataset, confidence=confidence, n_resamples=n_resamples)
            rows.append({"protocol": protocol, "dataset": dataset, "a": a, "b": b, "group": group, "metric": metric,
                         "diff": r["mean_difference"], "low": r["low"], "high": r["high"], "units": r["units"]})
    return pd.DataFrame(rows, columns=["protocol", "dataset", "a", "b", "group", "metric", "diff", "low", "high",
                                       "units"])
