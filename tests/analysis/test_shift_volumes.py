"""`embedx experiment shift --dims 3` on the built-in MRI phantoms, where the answer is known by construction.

Two sites of the phantom cohort at strength 2: VendorA (north) is a clean acquisition, VendorB (east) a
noisy one with a zipper line and a bias field. Seed 001's spheres go in through `embedx data lesions` (the
same code a user's volumes go through). A 3-D ResNet trained on one manufacturer must lose on the other
(the seed's finding: the noisy-trained model calls every clean volume positive, the clean-trained one
misses the lesions in noisy volumes), the mixed model must not, and hard lesions must be found less well
than easy ones, in every replicate.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from embedx.analysis.shift_volumes import PROGRESS, VolumeShiftSettings, shift_volumes
from embedx.cli import app
from embedx.data.lesions import LesionSettings, insert_lesions
from embedx.data.synth import generate_cohort
from embedx.data.volumes import VolumeGrid
from embedx.errors import EmbedxError

# The 3-D trainings take 100-230 s alone on two cores; beside the demo in the other xdist worker on a busy
# machine one took 593 s, just under the suite's 600 s default. A hang still fails, later.
SLOW_3D_TIMEOUT_S = 1500

GRID = VolumeGrid(shape=(32, 32, 16))
SETTINGS = VolumeShiftSettings(
    task="classify", grid=GRID, width=0.25, replicates=2, epochs=12, batch_size=8, lr=2e-3, bootstrap=200
)


@pytest.fixture(scope="module")
def lesion_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom3d")
    manifest = generate_cohort("mri", 600, root / "cohort", size=32, strength=2.0, prevalence=0.0, seed=1)
    table = pd.read_csv(manifest)
    table[table["site"].isin(["north", "east"])].to_csv(root / "cohort" / "pair.csv", index=False)
    return insert_lesions(
        root / "cohort" / "pair.csv", root / "lesions", LesionSettings(difficulties=("easy", "hard"), seed=2)
    )


def _cell(result: dict, tier: str, train: str, test: str) -> dict:
    (cell,) = [r for r in result["summary"] if (r["tier"], r["train"], r["test"]) == (tier, train, test)]
    return cell


@pytest.mark.slow
@pytest.mark.timeout(SLOW_3D_TIMEOUT_S)
def test_a_3d_classifier_trained_on_one_manufacturer_fails_on_the_other(lesion_cohort, tmp_path):
    result = shift_volumes(
        lesion_cohort, "manufacturer", "finding", tmp_path / "out", tiers=["easy"], settings=SETTINGS
    )
    assert result["dims"] == 3 and result["train_groups"] == ["VendorA", "VendorB", "all"]
    for train in ("VendorA", "VendorB", "all"):  # the task is learnt on the training group's own volumes
        own = "VendorA" if train == "all" else train
        assert _cell(result, "easy", train, own)["auroc_mean"] > 0.9
    # Per replicate, at the seed's threshold: a single-manufacturer model is right on its own manufacturer's
    # held-out volumes and far less so on the other's, where the mixed model does better. Over the
    # replicates the mixed model is right on both. (One 12-epoch replicate may stop short on the noisy
    # vendor: a change of float rounding alone, Adam's fused update for its per-tensor one, moved one from
    # 0.97 to 0.79 accuracy there, AUROC 0.91; what embedx reports is the replicates' mean and interval.)
    per_model = pd.DataFrame(result["results"])
    easy = per_model.set_index(["train", "test", "replicate"])["accuracy"]
    for replicate in range(SETTINGS.replicates):
        for train, other in (("VendorA", "VendorB"), ("VendorB", "VendorA")):
            assert easy[(train, train, replicate)] - easy[(train, other, replicate)] > 0.2
            assert easy[("all", other, replicate)] > easy[(train, other, replicate)]
    for vendor in ("VendorA", "VendorB"):
        assert _cell(result, "easy", "all", vendor)["accuracy_mean"] > 0.85
    # The noisy-trained model calls clean volumes positive: the seed's loss of specificity.
    assert _cell(result, "easy", "VendorB", "VendorA")["specificity_mean"] < 0.5
    (gap,) = [g for g in result["gaps"] if (g["train"], g["metric"]) == ("VendorB", "specificity")]
    assert gap["gap"] > 0.4
    # Subject-level hold-out and intervals: every cell of a tier is scored on the same test subjects.
    assert len({c["n_test"] for c in result["summary"] if c["test"] == "all"}) == 1
    low, high = _cell(result, "easy", "all", "all")["accuracy_ci"]
    assert low <= _cell(result, "easy", "all", "all")["accuracy_mean"] <= high
    # Harder lesions are harder, for the mixed model of every replicate. The hard tier's mixed model only
    # (--train-on all), in the same folder: the easy models are kept, and the test subjects are the same.
    hard = shift_volumes(
        lesion_cohort,
        "manufacturer",
        "finding",
        tmp_path / "out",
        tiers=["hard"],
        train_on=["all"],
        settings=SETTINGS,
    )
    assert {c["train"] for c in hard["summary"]} == {"all"} and len(hard["skipped"]) == 0
    assert (
        _cell(hard, "hard", "all", "all")["n_test_subjects"]
        == _cell(result, "easy", "all", "all")["n_test_subjects"]
    )
    hard_auroc = pd.DataFrame(hard["results"]).set_index(["train", "test", "replicate"])["auroc"]
    easy_auroc = per_model.set_index(["train", "test", "replicate"])["auroc"]
    for replicate in range(SETTINGS.replicates):
        assert easy_auroc[("all", "all", replicate)] > hard_auroc[("all", "all", replicate)]


def test_the_phantom_spheres_lie_inside_the_brain_and_the_field_of_view(lesion_cohort):
    lesions = pd.read_csv(lesion_cohort.parent / "lesions.csv")
    assert len(lesions) > 100 and set(lesions["tier"]) == {"easy", "hard"}
    for path in lesions["path"].head(30):
        mask = np.asarray(
            nib.load(str(lesion_cohort.parent / path.replace(".nii.gz", "_mask.nii.gz"))).dataobj
        )
        assert mask.any()
        # a sphere is never cut by the slab's first or last slice (the field of view bounds the mask)
        assert not mask[:, :, 0].any() and not mask[:, :, -1].any()
        assert not mask[0].any() and not mask[-1].any()


@pytest.mark.slow
@pytest.mark.timeout(SLOW_3D_TIMEOUT_S)
def test_segmentation_learns_the_masks_and_an_interrupted_run_resumes_to_the_same_matrix(
    lesion_cohort, tmp_path
):
    settings = VolumeShiftSettings(
        task="segment",
        grid=GRID,
        width=0.5,
        replicates=1,
        epochs=10,
        batch_size=8,
        lr=1e-2,
        bootstrap=100,
        min_lesion_ml=5.0,
    )

    def run(out: str, settings: VolumeShiftSettings) -> dict:
        return shift_volumes(
            lesion_cohort,
            "manufacturer",
            "finding",
            tmp_path / out,
            tiers=["hard"],
            train_on=["all"],
            settings=settings,
        )

    first = run("seg", settings)
    assert first["headline"] == "dice" and "dice_large" in first["metrics"]
    mixed = _cell(first, "hard", "all", "all")
    assert mixed["dice_large_mean"] > 0.4 and mixed["dice_large_mean"] > mixed["dice_small_mean"]
    assert mixed["sensitivity_mean"] > 0.8  # the predicted lesion covers >= 5 mL in most positives
    # Interrupt: drop a finished model; the re-run trains it again and gives the same matrix. Two epochs
    # are enough to show that (what is learnt does not matter, only that the retrained model is the same).
    short = dataclasses.replace(settings, epochs=2)
    before = run("seg_short", short)
    progress = tmp_path / "seg_short" / PROGRESS
    assert len(progress.read_text().splitlines()) == 1
    progress.write_text("")
    again = run("seg_short", short)
    assert len(progress.read_text().splitlines()) == 1
    assert again["summary"] == before["summary"]
    with pytest.raises(EmbedxError, match="another manifest or settings"):
        shift_volumes(
            lesion_cohort,
            "manufacturer",
            "finding",
            tmp_path / "seg",
            tiers=["hard"],
            settings=VolumeShiftSettings(task="segment", grid=GRID, width=0.5, epochs=3),
        )


def test_a_model_interrupted_mid_training_resumes_from_its_checkpoint_exactly(tmp_path):
    from embedx.models.volume_nets import resnet3d
    from embedx.training.accel import make_accelerator
    from embedx.training.volume_fit import FitSettings, fit_volume_model

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(24, 1, 16, 16, 16)).astype(np.float16))
    y = torch.from_numpy(rng.integers(0, 2, 24))
    settings = FitSettings(task="classify", epochs=3, batch_size=8, lr=1e-3, seed=5)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return resnet3d(0.25)

    whole = fit_volume_model(fresh(), x, y, settings, accelerator=make_accelerator("no", 0))

    class StopError(Exception):
        pass

    def stop_after_two(n: int) -> None:
        stop_after_two.epochs += n
        if stop_after_two.epochs == 2:
            raise StopError

    stop_after_two.epochs = 0
    checkpoint = tmp_path / "model.pt"
    with pytest.raises(StopError):
        fit_volume_model(
            fresh(),
            x,
            y,
            settings,
            accelerator=make_accelerator("no", 0),
            checkpoint=checkpoint,
            on_epoch=stop_after_two,
        )
    assert torch.load(checkpoint, weights_only=True)["epochs_done"] == 2
    resumed = fit_volume_model(
        fresh(), x, y, settings, accelerator=make_accelerator("no", 0), checkpoint=checkpoint
    )
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bad_3d_requests_name_the_problem(lesion_cohort, tmp_path):
    runner = CliRunner()
    base = [
        "experiment",
        "shift",
        "--manifest",
        str(lesion_cohort),
        "--by",
        "manufacturer",
        "--out",
        str(tmp_path / "o"),
    ]
    for extra, message in (
        (["--task", "segment"], "--dims 3"),
        (["--dims", "3", "--task", "segment", "--shape", "40"], "multiple of 16"),
        (["--dims", "3", "--window", "wide"], "LEVEL,WIDTH"),
        (["--dims", "3", "--bootstrap", "-5"], "--bootstrap must be 0"),
        (["--dims", "3", "--mixed-precision", "fp8"], "use auto, no, bf16 or fp16"),
    ):
        run = runner.invoke(app, [*base, *extra])
        assert run.exit_code != 0 and message in str(run.exception or run.output), extra
    (tmp_path / "bad.yaml").write_text("dims: 3\nlr: abc\n")
    run = runner.invoke(app, [*base, "--config", str(tmp_path / "bad.yaml")])
    assert run.exit_code != 0 and "bad.yaml: lr:" in str(run.exception or run.output)
    # every positive unreadable: no model can be trained, and an empty matrix is not a result
    table = pd.read_csv(lesion_cohort)
    positives = table["finding"] == 1
    table.loc[positives, "path"] = [f"volumes/missing{i}.nii.gz" for i in range(int(positives.sum()))]
    table.to_csv(lesion_cohort.parent / "no_positives.csv", index=False)
    with pytest.raises(EmbedxError, match="no model could be trained"):
        shift_volumes(lesion_cohort.parent / "no_positives.csv", "manufacturer", "finding", tmp_path / "o3",
                      tiers=["easy"], settings=SETTINGS)
    table = pd.read_csv(lesion_cohort)
    table.loc[table["finding"] == 1, "lesion_mask"] = ""
    table.to_csv(tmp_path / "no_masks.csv", index=False)
    with pytest.raises(EmbedxError, match="have no lesion_mask"):
        shift_volumes(
            tmp_path / "no_masks.csv",
            "manufacturer",
            "finding",
            tmp_path / "o2",
            settings=VolumeShiftSettings(task="segment", grid=GRID),
        )


@pytest.mark.slow
@pytest.mark.timeout(SLOW_3D_TIMEOUT_S)
def test_the_cli_runs_3d_from_a_config_writes_its_files_and_the_store(lesion_cohort, tmp_path):
    from embedx.store.h5store import Store

    store = tmp_path / "s.h5"
    Store.create(store).close()
    config = tmp_path / "small.yaml"
    config.write_text(
        "dims: 3\ntask: classify\nshape: [32, 32, 16]\nwidth: 0.25\nreplicates: 1\nepochs: 2\n"
        "batch_size: 8\nlr: 0.002\ntiers: easy\nbootstrap: 50\n"
    )
    out = tmp_path / "out"
    run = CliRunner().invoke(
        app,
        [
            "experiment",
            "shift",
            "--manifest",
            str(lesion_cohort),
            "--by",
            "manufacturer",
            "--config",
            str(config),
            "--epochs",
            "1",
            "--out",
            str(out),
            "--store",
            str(store),
        ],
    )
    assert run.exit_code == 0, run.output
    result = json.loads((out / "shift.json").read_text())
    assert result["dims"] == 3 and result["settings"]["epochs"] == 1  # the command line beat the config
    assert result["settings"]["grid"]["shape"] == [32, 32, 16] and result["tiers"] == ["easy"]
    assert {"accuracy_ci_low", "accuracy_ci_high"} <= set(pd.read_csv(out / "shift.csv").columns)
    assert all(r["accuracy_sd"] is None for r in result["summary"])  # one replicate: no spread to report
    assert (out / "shift_auroc.png").stat().st_size > 10_000 and (out / "shift_specificity.png").exists()
    with Store.open(store) as handle:
        (stored,) = [c for c in handle.read_analysis("controls") if c.get("control") == "shift"]
    assert stored["dims"] == 3 and stored["summary"] == result["summary"]
    assert "tier easy" in run.output


def test_the_shipped_seed_scale_config_holds_only_known_options():
    from importlib.resources import files

    import yaml

    from embedx.cli.experiment import CONFIG_KEYS
    from embedx.data.volumes import VolumeGrid, parse_shape

    config = yaml.safe_load((files("embedx") / "configs" / "seed001_shift3d.yaml").read_text())
    assert set(config) <= set(CONFIG_KEYS)
    assert config["dims"] == 3 and config["batch_size"] == 32  # the seed's batch
    grid = VolumeGrid(shape=parse_shape(",".join(map(str, config["shape"]))), window=config["window"])
    assert grid.shape == (256, 256, 32) and all(s % 16 == 0 for s in grid.shape)  # the U-Net can take it


def test_restart_discards_the_progress_and_the_half_trained_models(tmp_path):
    from embedx.analysis.shift_volumes import _read_progress

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "0123.pt").write_bytes(b"half-trained")
    progress = tmp_path / PROGRESS
    progress.write_text(json.dumps({"key": "k", "fingerprint": "old", "rows": [], "score": []}) + "\n")
    with pytest.raises(EmbedxError, match="another manifest or settings"):
        _read_progress(progress, "new", restart=False)
    assert _read_progress(progress, "new", restart=True) == {}
    assert not progress.exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.timeout(SLOW_3D_TIMEOUT_S)
def test_a_model_trained_before_a_broken_file_was_fixed_is_trained_again(lesion_cohort, tmp_path):
    """Resuming after the readable volumes changed must not mix models tested on different volumes."""
    table = pd.read_csv(lesion_cohort)
    (tmp_path / "v").mkdir()
    negatives = table.index[(table["finding"] == 0) & (table["manufacturer"] == "VendorB")][:8]
    for i in negatives:  # own copies that can be broken and fixed
        source = Path(table.at[i, "path"])
        source = source if source.is_absolute() else lesion_cohort.parent / source
        (tmp_path / "v" / f"{i}.nii.gz").write_bytes(source.read_bytes())
        table.at[i, "path"] = str(tmp_path / "v" / f"{i}.nii.gz")
    for column in ("path", "lesion_mask"):  # relative paths of the lesion cohort, made absolute
        table[column] = [p if not isinstance(p, str) or not p or Path(p).is_absolute()
                         else str(lesion_cohort.parent / p) for p in table[column]]
    table.to_csv(tmp_path / "m.csv", index=False)
    settings = VolumeShiftSettings(task="classify", grid=GRID, width=0.25, replicates=2, epochs=1,
                                   batch_size=8, lr=2e-3, bootstrap=20)

    def run() -> dict:
        return shift_volumes(tmp_path / "m.csv", "manufacturer", "finding", tmp_path / "out", tiers=["easy"],
                             train_on=["all"], settings=settings)

    good = {i: (tmp_path / "v" / f"{i}.nii.gz").read_bytes() for i in negatives}
    for i in negatives:
        (tmp_path / "v" / f"{i}.nii.gz").write_bytes(b"not a volume")
    broken = run()
    assert len(broken["failed"]) == len(negatives)
    progress = tmp_path / "out" / PROGRESS
    progress.write_text(progress.read_text().splitlines()[0] + "\n")  # as if stopped after replicate 0
    for i, data in good.items():
        (tmp_path / "v" / f"{i}.nii.gz").write_bytes(data)
    fixed = run()
    assert fixed["failed"] == []
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    assert len({len(r["rows"]) for r in records[-2:]}) == 1  # both replicates on the same test volumes
    cell = _cell(fixed, "easy", "all", "all")
    assert cell["n_test"] == _cell(broken, "easy", "all", "all")["n_test"] + sum(
        1 for r in records[-1]["rows"] if r not in records[0]["rows"])
