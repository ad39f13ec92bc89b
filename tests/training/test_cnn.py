"""Known answer: the CNN names the site on held-out subjects and is at chance on a label without pixel effect.

The synthetic cohort injects a site signature (strength 1) and nothing for `insurance`, so a classifier of
insurance can only memorise its training subjects. Held-out: the loop's subject-grouped validation split
(30 % of subjects, ~120 images).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from embedx.data.dataset import ImageDataset
from embedx.data.manifest import load_manifest
from embedx.data.splits import train_val_test_split
from embedx.training.checkpoint import load_trained
from embedx.training.loop import train


def _train_cnn(cohort: Path, tiny_config, out: Path, label: str) -> Path:
    config = tiny_config("cnn", f"data.label={label}", "data.val_fraction=0.3", "optim.lr=2e-3",
                         "eval.max_val_samples=400", total=1280, batch=32, every=640)
    return train(config, cohort, out)


def _held_out_balanced_accuracy(run: Path, cohort: Path) -> tuple[float, int]:
    """Recomputed from the shipped model on the validation subjects (independently of the loop's metric)."""
    loaded = load_trained(run)
    manifest = load_manifest(cohort)
    data = loaded.config.data
    split = train_val_test_split(manifest.table, (1 - data.val_fraction, data.val_fraction, 0.0),
                                 stratify=data.label, seed=data.split_seed)
    train_subjects = set(manifest.table["subject_id"].iloc[split.train])
    assert not train_subjects & set(manifest.table["subject_id"].iloc[split.val])
    dataset = ImageDataset(manifest, loaded.preprocess, rows=split.val, label=data.label)
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([it["image"] for it in items])
    truth = np.array([int(it["label"]) for it in items])
    with torch.no_grad():
        predicted = loaded.model(images).argmax(1).numpy()
    return balanced_accuracy_score(truth, predicted), len(truth)


def _logged(run: Path, metric: str) -> float:
    table = pd.read_csv(run / "metrics.csv")
    rows = table[(table["split"] == "val") & (table["metric"] == metric)]
    return float(rows["value"].iloc[-1])


def test_cnn_names_the_site_on_held_out_subjects(cohort: Path, tiny_config, tmp_path: Path) -> None:
    run = _train_cnn(cohort, tiny_config, tmp_path / "site", "site")
    score, n = _held_out_balanced_accuracy(run, cohort)
    assert n > 80
    assert score > 0.8, score  # chance is 0.25 with 4 sites
    assert score == pytest.approx(_logged(run, "balanced_accuracy"), abs=1e-9)  # the loop's eval agrees
    info = json.loads((run / "run.json").read_text())
    assert info["classes"] == sorted(load_manifest(cohort).table["site"].unique().tolist())
    assert (run / "eval" / "confusion-000001280.png").exists()
    # load_trained rebuilds the shipped CNN: its features (what encode stores) match a second load exactly.
    images = torch.stack([ImageDataset(load_manifest(cohort), load_trained(run).preprocess)[i]["image"]
                          for i in range(4)])
    torch.testing.assert_close(load_trained(run).model.embed(images), load_trained(run).model.embed(images),
                               rtol=0, atol=0)
    losses = pd.read_csv(run / "metrics.csv").query("split == 'train' and metric == 'loss'")["value"]
    assert losses.iloc[-1] < 0.5 * losses.iloc[0]  # from ~ln 4 = 1.39


def test_cnn_is_at_chance_on_a_label_without_pixel_effect(cohort: Path, tiny_config, tmp_path: Path) -> None:
    run = _train_cnn(cohort, tiny_config, tmp_path / "insurance", "insurance")
    score, n = _held_out_balanced_accuracy(run, cohort)
    classes = json.loads((run / "run.json").read_text())["classes"]
    chance = 1 / len(classes)
    # Tolerance 0.17: with ~120 held-out images over 3 classes the standard error of a balanced accuracy
    # at chance is ~0.05, so +-0.17 is > 3 SE; a real pixel signal (like the site's) scores > 0.8.
    assert abs(score - chance) < 0.17, (score, chance, n)
