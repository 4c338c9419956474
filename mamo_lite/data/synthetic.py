"""A seeded synthetic dataset with MovieLens-1M's schema and planted user types (STYLE lesson 6).

It exists so that every chapter and test runs offline, and so that MAMO's memories have something
to find. The generator plants ``K`` *user types*:

* a user's type is a deterministic function of the profile — of (gender, age group), assigned so
  that the types have roughly equal population — except for a few percent of users whose type is
  flipped at random. So the profile predicts the type (MAMO's profile memory ``M_P`` can learn to
  route users by it, Eqs. 3–4), but not perfectly;
* each type has its own preference vector over genres and its own rating offset, so users of
  different types pull a shared initialisation in different directions (the weakness of a single
  MAML initialisation, MAMO §1).

Ratings follow

    r = clip(round(3 + offset[t] + pref[t] · g_i / |g_i| + quality_i + ε), 1, 5),  ε ~ N(0, noise²)

with ``g_i`` the item's genre multi-hot vector (so ``pref[t] · g_i / |g_i|`` is the type's mean
preference over the item's genres, centred so that its mean over all the generated ratings is 0: a
type's mean rating is set by its offset, its preferences only move items up or down) and
``quality_i ~ N(0, quality²)``.

Items are rated with Zipf-skewed popularity, so in the protocol's trimmed table (first 20 ratings
per user) many items have ≤ 10 ratings and all four scenarios W-W, W-C, C-W, C-C occur. Rating
times are Unix seconds around 2000: a ``cold_user_fraction`` of users (exactly, rounded) make their
first rating on/after 2000-12-03 00:00 UTC (:data:`SPLIT_TIME`, the protocol's default split),
everybody else before it.

The true type is kept in ``users["true_type"]``, a column outside ``user_fields`` that models never
see, so chapters can check how well a memory recovers it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mamo_lite.data.raw import RawTables

GENDERS: tuple[str, ...] = ("M", "F")
AGES: tuple[int, ...] = (1, 18, 25, 35, 45, 50, 56)
"""ML-1M's age groups (``users.dat``)."""
N_OCCUPATIONS = 21
RATES: tuple[str, ...] = ("PG-13", "UNRATED", "NC-17", "PG", "G", "R")
"""MPAA ratings as in ``movies_extrainfos.dat`` (MAMO's item feature ``rate``)."""
GENRES: tuple[str, ...] = (
    "Drama", "Comedy", "Romance", "Crime", "Action", "Thriller", "Adventure", "Horror", "Mystery",
    "Family", "Sci-Fi", "Fantasy", "Biography", "Music", "Documentary", "War", "Animation",
    "History", "Sport", "Musical", "Western", "Film-Noir",
)
"""IMDb genre names, as in ``movies_extrainfos.dat`` (ordered by frequency there)."""

SPLIT_TIME = 975_801_600
"""2000-12-03 00:00:00 UTC: users whose first rating is at or after it are cold (MAMO §3.1.4)."""
START_TIME = 956_707_200  # 2000-04-26 00:00:00 UTC, ML-1M's first rating day
END_TIME = 1_046_390_400  # 2003-02-28 00:00:00 UTC, ML-1M's last rating day

# Marginal frequencies in ML-1M (users.dat; movies_extrainfos.dat), rounded.
_P_GENDER = np.array([0.717, 0.283])
_P_AGE = np.array([222, 1103, 2096, 1193, 550, 496, 380], dtype=float)
_P_RATE = np.array([585, 810, 18, 603, 180, 1685], dtype=float)
_P_GENRE = np.array([2146, 1502, 813, 643, 550, 516, 508, 392, 269, 267, 267, 253, 182, 152, 126,
                     115, 113, 99, 80, 70, 56, 38], dtype=float)


def _profile_to_type(n_types: int) -> dict[tuple[str, int], int]:
    """Assign the 14 (gender, age) cells to types, greedily balancing the expected population.

    Cells are taken from the most to the least populous and each goes to the type with the smallest
    population so far (ties: lowest type index), so the map is fixed and the types are near-equal.
    """
    mass = {(g, a): pg * pa for g, pg in zip(GENDERS, _P_GENDER, strict=True)
            for a, pa in zip(AGES, _P_AGE / _P_AGE.sum(), strict=True)}
    load = np.zeros(n_types)
    out: dict[tuple[str, int], int] = {}
    for cell in sorted(mass, key=lambda c: (-mass[c], c)):
        t = int(np.argmin(load))
        out[cell] = t
        load[t] += mass[cell]
    return out


def make_synthetic(n_users: int = 600, n_items: int = 400, n_types: int = 3,
                   ratings_per_user: tuple[int, int] = (20, 40), seed: int = 0, noise: float = 0.5,
                   cold_user_fraction: float = 0.15, *, type_flip: float = 0.05,
                   offset_spread: float = 0.75, pref_scale: float = 1.0, quality: float = 0.4,
                   zipf_exponent: float = 1.2, n_directors: int | None = None) -> RawTables:
    """Generate a synthetic dataset with ML-1M's schema and ``n_types`` planted user types.

    Args:
        n_users, n_items: table sizes. Ids run from 1.
        n_types: number of planted types ``K`` (1–14: one per (gender, age) cell at most).
        ratings_per_user: inclusive range of ratings per user (uniform). Must be ≤ ``n_items``.
        seed: everything is a function of the arguments; the same seed gives identical frames.
        noise: std of the per-rating noise ε (before rounding).
        cold_user_fraction: share of users whose first rating is on/after :data:`SPLIT_TIME`.
        type_flip: share of users whose type is redrawn uniformly among the *other* types, so the
            profile predicts the type with accuracy ≈ 1 − type_flip.
        offset_spread: type offsets are evenly spaced in ``[-spread, +spread]`` (shuffled).
        pref_scale: std of each type's per-genre preference (``pref[t] ~ N(0, pref_scale²)``).
        quality: std of the per-item quality term.
        zipf_exponent: item popularity ∝ 1 / rank^exponent (ranks shuffled over item ids).
        n_directors: size of the director pool (default ``n_items // 3``).

    Returns:
        ``RawTables`` named ``synthetic``: ``users`` (user, gender, age, occupation, true_type),
        ``items`` (item, rate, year (``Int64``), genre, director, title; genre/director cells are
        tuples of str),
        ``ratings`` (user, item, rating float64 in 1–5, order int64 Unix seconds, strictly
        increasing per user), ``time_based=True``, ``release="synthetic"``, ``files={}``.
    """
    lo, hi = ratings_per_user
    if not 1 <= n_types <= len(GENDERS) * len(AGES):
        raise ValueError(f"n_types must be in 1..{len(GENDERS) * len(AGES)}, got {n_types}")
    if not 1 <= lo <= hi <= n_items:
        raise ValueError(f"need 1 ≤ ratings_per_user[0] ≤ ratings_per_user[1] ≤ n_items, got "
                         f"{ratings_per_user} with n_items={n_items}")
    if not 0.0 <= cold_user_fraction <= 1.0 or not 0.0 <= type_flip <= 1.0:
        raise ValueError("cold_user_fraction and type_flip must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    n_directors = n_directors or max(1, n_items // 3)

    # Users: ML-1M marginals; type = f(gender, age) with a few percent flipped.
    gender = rng.choice(len(GENDERS), size=n_users, p=_P_GENDER / _P_GENDER.sum())
    age = rng.choice(len(AGES), size=n_users, p=_P_AGE / _P_AGE.sum())
    occupation = rng.integers(0, N_OCCUPATIONS, size=n_users)
    cell_type = _profile_to_type(n_types)
    true_type = np.array([cell_type[(GENDERS[g], AGES[a])] for g, a in zip(gender, age, strict=True)])
    flip = rng.random(n_users) < type_flip
    if n_types > 1:
        shift = rng.integers(1, n_types, size=n_users)
        true_type = np.where(flip, (true_type + shift) % n_types, true_type)

    # Types: rating offset and per-genre preference.
    offsets = rng.permutation(np.linspace(-offset_spread, offset_spread, n_types)) if n_types > 1 \
        else np.zeros(1)
    prefs = rng.normal(0.0, pref_scale, size=(n_types, len(GENRES)))

    # Items: MPAA rate, year skewed to the 1990s, 1–3 genres, mostly one director.
    rate = rng.choice(len(RATES), size=n_items, p=_P_RATE / _P_RATE.sum())
    year = np.clip(2000 - np.floor(rng.exponential(9.0, size=n_items)), 1919, 2000).astype(np.int64)
    n_genres = rng.choice([1, 2, 3], size=n_items, p=[0.45, 0.35, 0.20])
    genre_keys = np.log(_P_GENRE / _P_GENRE.sum()) + rng.gumbel(size=(n_items, len(GENRES)))
    genre_rank = np.argsort(-genre_keys, axis=1, kind="stable")  # weighted sampling w/o replacement
    multi_hot = np.zeros((n_items, len(GENRES)))
    genre_cells = []
    for i in range(n_items):
        chosen = np.sort(genre_rank[i, :n_genres[i]])
        multi_hot[i, chosen] = 1.0
        genre_cells.append(tuple(GENRES[j] for j in chosen))
    n_dir = np.where(rng.random(n_items) < 0.95, 1, 2)
    director_ids = rng.integers(1, n_directors + 1, size=(n_items, 2))
    director_cells = [tuple(f"Director {d:04d}" for d in sorted(set(director_ids[i, :n_dir[i]])))
                      for i in range(n_items)]
    item_quality = rng.normal(0.0, quality, size=n_items)

    # Which items each user rates: Zipf popularity, sampled without replacement (Gumbel top-k).
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf_exponent
    popularity = popularity[rng.permutation(n_items)]
    counts = rng.integers(lo, hi + 1, size=n_users)
    keys = np.log(popularity / popularity.sum()) + rng.gumbel(size=(n_users, n_items))
    ranked = np.argsort(-keys, axis=1, kind="stable")
    user_idx = np.repeat(np.arange(n_users), counts)
    item_idx = np.concatenate([rng.permutation(ranked[u, :counts[u]]) for u in range(n_users)])

    # Ratings. The genre term of each type is centred on its mean over the sampled ratings, so a
    # type's mean rating is set by its offset and its preferences only move items up or down.
    item_pref = prefs @ (multi_hot / multi_hot.sum(1, keepdims=True)).T  # [K, n_items]
    freq = np.bincount(item_idx, minlength=n_items).astype(float)
    item_pref -= (item_pref @ freq / freq.sum())[:, None]
    t = true_type[user_idx]
    genre_pref = item_pref[t, item_idx]
    raw = 3.0 + offsets[t] + genre_pref + item_quality[item_idx] + rng.normal(0.0, noise, user_idx.size)
    rating = np.clip(np.round(raw), 1, 5).astype(np.float64)

    # Times: first rating before / after the split, then strictly increasing gaps
    # (minutes within a session, occasionally days or weeks between sessions).
    n_cold = round(cold_user_fraction * n_users)
    cold = np.zeros(n_users, dtype=bool)
    cold[rng.choice(n_users, size=n_cold, replace=False)] = True
    first = np.where(cold, rng.integers(SPLIT_TIME, END_TIME - 60 * 86_400, size=n_users),
                     rng.integers(START_TIME, SPLIT_TIME, size=n_users))
    gaps = 1 + np.round(rng.exponential(300.0, size=user_idx.size)).astype(np.int64)
    gaps += np.where(rng.random(user_idx.size) < 0.05,
                     np.round(rng.exponential(14 * 86_400.0, size=user_idx.size)).astype(np.int64), 0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    gaps[starts] = 0
    cum = np.cumsum(gaps)
    order = first[user_idx] + cum - np.repeat(cum[starts], counts)

    users = pd.DataFrame({
        "user": np.arange(1, n_users + 1, dtype=np.int64),
        "gender": [GENDERS[g] for g in gender],
        "age": np.array(AGES, dtype=np.int64)[age],
        "occupation": occupation.astype(np.int64),
        "true_type": true_type.astype(np.int64),
    })
    items = pd.DataFrame({
        "item": np.arange(1, n_items + 1, dtype=np.int64),
        "rate": [RATES[r] for r in rate],
        "year": pd.array(year, dtype="Int64"),  # nullable, as the ML-1M parser's (N/A years)
        "genre": pd.Series(genre_cells, dtype=object),
        "director": pd.Series(director_cells, dtype=object),
        "title": [f"Synthetic Movie {j} ({y})" for j, y in enumerate(year, start=1)],
    })
    ratings = pd.DataFrame({
        "user": user_idx.astype(np.int64) + 1,
        "item": item_idx.astype(np.int64) + 1,
        "rating": rating,
        "order": order.astype(np.int64),
    })
    settings = (f"n_users={n_users}, n_items={n_items}, n_types={n_types}, "
                f"ratings_per_user={tuple(ratings_per_user)}, seed={seed}, noise={noise}, "
                f"cold_user_fraction={cold_user_fraction}, type_flip={type_flip}, "
                f"offset_spread={offset_spread}, pref_scale={pref_scale}, quality={quality}, "
                f"zipf_exponent={zipf_exponent}, n_directors={n_directors}")
    notes = [
        f"make_synthetic({settings})",
        "rating = clip(round(3 + offset[type] + centred genre preference[type] + quality + noise), 1, 5)",
        "type = f(gender, age) (population-balanced map), type_flip of users redrawn; "
        + "users['true_type'] is not a model feature",
        "type offsets: " + ", ".join(f"{o:+.2f}" for o in offsets),
        f"{n_cold} of {n_users} users first rate on/after 2000-12-03 00:00 UTC (cold by time)",
    ]
    return RawTables(
        name="synthetic", users=users, items=items, ratings=ratings,
        user_fields=["gender", "age", "occupation"], item_categorical=["rate", "year"],
        item_multi=["genre", "director"], rating_min=1.0, rating_max=5.0, time_based=True,
        release="synthetic", files={}, notes=notes,
    )
