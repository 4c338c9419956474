"""Named run sizes: one preset controls how big every chapter and command runs (STYLE lesson 7).

=========  ==========================================================================================
preset     meant for
=========  ==========================================================================================
``smoke``  tests and papermill smoke runs: a few dozen users, one epoch, seconds on a laptop CPU
``book``   what the committed chapters run: every user, 3 epochs, three seeds (ML-1M on 2 CPU
           cores, ``mamo-lite train`` incl. validation and test: ≈ 10 s per MAML or MAMO run,
           ≈ 4 s per MeLU run; a 4-method × 3-seed table ≈ 1.5 minutes)
``full``   the paper's scale: every user, MeLU's 20 epochs, five seeds (GPU recommended)
=========  ==========================================================================================

A chapter's ``parameters`` cell sets ``PRESET = "book"``; papermill smoke runs inject ``"smoke"``.
Read the sizes with ``preset(PRESET)`` and pass them on; the CLI's ``--preset`` does the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["PRESETS", "Preset", "preset"]


@dataclass(frozen=True)
class Preset:
    """How large a run is. ``None`` for a user limit means "every user of the split"."""

    name: str
    description: str
    epochs: int  # passes over the (possibly limited) training users
    max_train_users: int | None  # a seeded subset of the training users
    max_val_users: int | None  # held-out training users used for best-epoch selection
    max_test_users: int | None  # test users evaluated (a seeded subset)
    eval_chunk: int  # users per prediction chunk (memory vs. speed)
    seeds: tuple[int, ...]  # seeds for multi-seed tables (mean ± std)
    patience: int | None = None  # early stopping after this many epochs without a better val MAE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("smoke", "seconds: a few dozen users, one epoch (tests, papermill smoke runs)",
               epochs=1, max_train_users=48, max_val_users=16, max_test_users=64, eval_chunk=64, seeds=(0,)),
        Preset("book", "minutes on 2 CPU cores: what the committed chapters run (every user, 3 epochs)",
               epochs=3, max_train_users=None, max_val_users=None, max_test_users=None, eval_chunk=256,
               seeds=(0, 1, 2)),
        Preset("full", "paper scale: every user, MeLU's 20 epochs, five seeds (GPU recommended)",
               epochs=20, max_train_users=None, max_val_users=None, max_test_users=None, eval_chunk=512,
               seeds=(0, 1, 2, 3, 4), patience=5),
    )
}


def preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (``"smoke"``, ``"book"`` or ``"full"``); a ``Preset`` passes through."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
