"""``bench/greatmeta.py`` without the authors' code: it refuses a missing, wrong or unprepared checkout with a
clear message and writes no JSON; their configuration is read and patched as documented; our side runs in a
tiny mode (synthetic data, seconds); the summary pairs the ratios per round."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "greatmeta.py"


@pytest.fixture
def gm(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("greatmeta")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def fake_checkout(gm, root: Path, *, drop: str | None = None) -> Path:
    """A directory with the files and lines ``check_checkout`` looks for (``drop``: leave that line out)."""
    lines: dict[str, list[str]] = {}
    for p in gm.PATCHES:
        lines.setdefault(p["file"], []).append(p["old"])
    for e in gm.EXPECTED:
        lines.setdefault(e["file"], []).append(e["line"])
    lines.setdefault(gm.MODEL_YAML, []).append("embedding_size: 32")
    for file, content in lines.items():
        f = root / file
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("\n".join(line for line in content if line != drop) + "\n", encoding="utf-8")
    inter = root / gm.DATASET_DIR / "ml-100k" / "ml-100k.inter"
    inter.parent.mkdir(parents=True)
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n")
    return root


def test_an_absent_checkout_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "gm.json"
    res = run(str(tmp_path / "nowhere"), "--out", str(out))
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "git clone https://github.com/YantongDU/GreatMeta" in res.stderr
    assert not out.exists()
    res = run("--out", str(out))  # no checkout at all
    assert res.returncode == 2 and "give the authors' checkout" in res.stderr and not out.exists()


def test_a_wrong_or_unprepared_checkout_is_refused(gm, tmp_path):
    out = tmp_path / "gm.json"
    (tmp_path / "other").mkdir()
    res = run(str(tmp_path / "other"), "--out", str(out))
    assert res.returncode == 2 and "is not a checkout of" in res.stderr

    bad = fake_checkout(gm, tmp_path / "bad", drop="self.local_update_count = 3")
    res = run(str(bad), "--out", str(out))
    assert res.returncode == 2 and "self.local_update_count = 3" in res.stderr and "not commit 2cdae39" in res.stderr

    good = fake_checkout(gm, tmp_path / "gm" / "GreatMeta")
    res = run(str(good), "--out", str(out))  # no RecBole site next to it
    assert res.returncode == 2
    assert "is not prepared" in res.stderr and "recbole absent" in res.stderr and "--prepare" in res.stderr
    site = tmp_path / "gm" / "site"
    (site / "recbole-1.1.1.dist-info").mkdir(parents=True)
    (site / "pandas-3.0.0.dist-info").mkdir()
    res = run(str(good), "--out", str(out))
    assert res.returncode == 2 and "pandas 3.0.0 (wanted 2.3.3)" in res.stderr
    assert not out.exists()

    (site / "pandas-3.0.0.dist-info").rmdir()
    (site / "pandas-2.3.3.dist-info").mkdir()
    gm.check_checkout(good)  # prepared: passes (the site defaults to 'site' next to the checkout)
    with pytest.raises(SystemExit, match="2"):
        gm.main([str(good), "--configs", "matched,paper", "--out", str(out)])  # refused before any run
    assert not out.exists()


def test_their_config_is_read_from_quickstart_and_patched_in_memory(gm, tmp_path):
    checkout = tmp_path / "GreatMeta"
    checkout.mkdir()
    (checkout / "quickstart.py").write_text(
        "import openpyxl\nparam_config = {\n    'metrics': ['mae', 'mse', 'ndcg'],\n    'valid_metric': 'mse',\n"
        "    'train_batch_size': 32,\n}\nraise SystemExit('never run')\n", encoding="utf-8")
    config = gm.authors_config(checkout)
    assert config["metrics"] == ["mae", "rmse"] and config["valid_metric"] == "rmse"
    assert config["train_batch_size"] == 32 and config["gpu_id"] == ""
    assert config["data_path"] == str(checkout / gm.DATASET_DIR) + "/"
    assert (checkout / "quickstart.py").read_text(encoding="utf-8").count("'mse'") == 2  # the file is unchanged


def test_our_side_runs_in_a_tiny_mode():
    res = run("--worker", "matched", "--tiny", "--threads", "1", timeout=300)
    assert res.returncode == 0, res.stderr
    row = json.loads([line for line in res.stdout.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])
    assert row["dataset"] == "synthetic (tiny)" and row["finite_loss"]
    assert row["config"] == {"inner_steps": 3, "users_per_batch": 32}
    assert row["overrides"]["inner_steps"] == 3 and row["overrides"]["gradients"] == "aliased"
    assert row["users_timed"] == row["users_per_epoch"] > 32 and row["batches_timed"] == row["batches_per_epoch"]
    assert len(row["batch_seconds"]) == row["batches_timed"]
    assert sum(row["batch_seconds"]) == pytest.approx(row["train_seconds"])
    assert row["ratings_per_user"]["min"] >= 40


def test_ratios_are_paired_per_round_and_epochs_extrapolated_by_users(gm):
    def row(seconds, users_timed=349):
        return {"train_seconds": seconds, "users_timed": users_timed, "users_per_epoch": 349, "batches_per_epoch": 11}

    runs = {"authors": [row(40.0), row(20.0)], "matched": [row(2.0), row(1.0)],
            "default": [row(0.5, users_timed=64), row(0.5, users_timed=64)]}
    out = {e["side"]: e for e in gm.summarise(runs)}
    assert out["matched"]["authors_over_ours"] == {"median": 20.0, "min": 20.0, "max": 20.0}
    assert out["matched"]["target_met"] is True
    assert out["authors"]["epoch_seconds"] == {"median": 30.0, "min": 20.0, "max": 40.0}
    assert out["authors"]["batch_seconds"]["max"] == pytest.approx(40.0 / 11)
    assert out["default"]["epoch_seconds"]["median"] == pytest.approx(0.5 * 349 / 64)
    assert out["default"]["target_met"] is False and "authors_over_ours" not in out["authors"]
