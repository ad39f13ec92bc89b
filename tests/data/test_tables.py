"""CheXpert and NIH ChestX-ray14 tables -> manifests, on small CSVs with the published column layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedx.data.tables import chexpert_table, nih_table, write_chexpert, write_nih
from embedx.errors import EmbedxError, ManifestError

# Header and first rows as in CheXpert-v1.0-small/train.csv (plus a PA view and an 'Unknown' sex row).
CHEXPERT_CSV = """\
Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,\
Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,\
Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,AP,,,,,,1.0,,,,0.0,,,,
CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Unknown,0,Frontal,PA,1.0,0.0,,,,,,,,,,,,
"""

# Header and rows as in Data_Entry_2017.csv (the v2020 release drops the trailing empty column).
NIH_CSV = """\
Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,\
OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]
00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143
00000002_000.png,No Finding,0,2,80,M,PA,2500,2048,0.171,0.171
00000003_000.png,Hernia,0,3,081Y,F,AP,2582,2991,0.143,0.143
00000004_000.png,Mass|Nodule,0,4,414,F,AP,2500,2048,0.168,0.168
"""


@pytest.fixture()
def chexpert_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    path.write_text(CHEXPERT_CSV)
    return path


def test_chexpert_subjects_views_sex(chexpert_csv: Path, tmp_path: Path) -> None:
    table = chexpert_table(chexpert_csv, tmp_path / "data", tmp_path / "out")
    assert list(table["subject_id"]) == [
        "patient00001",
        "patient00002",
        "patient00002",
        "patient00002",
        "patient00003",
        "patient00004",
    ]
    assert list(table["view"].fillna("-")) == ["AP", "AP", "AP", "lateral", "AP", "PA"]
    assert list(table["sex"].fillna("-")) == ["F", "F", "F", "F", "M", "-"]
    assert list(table["age"]) == [68, 87, 83, 83, 41, 0]
    assert table["path"][0] == str(
        (tmp_path / "data/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg").resolve()
    )
    assert "pleural_effusion" in table.columns and "Pleural Effusion" not in table.columns


def test_chexpert_uncertainty_policies(chexpert_csv: Path, tmp_path: Path) -> None:
    def column(uncertain: str, blank: str = "zeros", name: str = "cardiomegaly") -> list[float]:
        t = chexpert_table(chexpert_csv, tmp_path, tmp_path, uncertain=uncertain, blank=blank)  # type: ignore
        return [np.nan if pd.isna(v) else float(v) for v in t[name]]

    # cardiomegaly: blank, -1, blank, blank, blank, blank
    assert column("ones") == [0, 1, 0, 0, 0, 0]
    assert column("zeros") == [0, 0, 0, 0, 0, 0]
    ignore = column("ignore")
    assert np.isnan(ignore[1]) and ignore[0] == 0 and ignore[2:] == [0, 0, 0, 0]
    missing = column("ignore", blank="missing")
    assert sum(np.isnan(missing)) == 6
    # pneumothorax: 0, blank, blank, blank, 0, blank — explicit negatives stay 0 under every policy
    pneumothorax = column("ignore", blank="missing", name="pneumothorax")
    assert pneumothorax[0] == 0 and pneumothorax[4] == 0 and np.isnan(pneumothorax[1])
    with pytest.raises(EmbedxError, match="--uncertain"):
        chexpert_table(chexpert_csv, tmp_path, tmp_path, uncertain="maybe")  # type: ignore[arg-type]


def test_chexpert_root_and_relative_paths(chexpert_csv: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "CheXpert-v1.0-small"
    image = dataset / "train/patient00001/study1/view1_frontal.jpg"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
    # --root pointing at the dataset folder itself, which Path already names
    table = write_chexpert(chexpert_csv, dataset, tmp_path / "manifest.csv", uncertain="zeros")
    assert table["path"][0] == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    spec = (tmp_path / "manifest.yaml").read_text()
    assert "view:\n    kind: categorical\n    role: acquisition" in spec
    assert "pneumonia:\n    kind: binary\n    role: clinical" in spec


def test_chexpert_bad_tables(tmp_path: Path) -> None:
    no_sex = tmp_path / "a.csv"
    no_sex.write_text("Path,Age,Frontal/Lateral,AP/PA,Edema\nx/patient1/a.jpg,3,Frontal,AP,1\n")
    with pytest.raises(ManifestError, match="'Sex'"):
        chexpert_table(no_sex, tmp_path, tmp_path)
    bad_rows = tmp_path / "b.csv"
    bad_rows.write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,Edema\n"
        "x/patient1/a.jpg,Male,old,Frontal,AP,1\n"
        "x/nobody/b.jpg,Male,50,Frontal,AP,2\n"
    )
    with pytest.raises(ManifestError) as info:
        chexpert_table(bad_rows, tmp_path, tmp_path)
    message = str(info.value)
    assert "line 2, column 'Age'" in message and "line 3, column 'Path'" in message
    assert "line 3, column 'Edema'" in message and "3 unusable row(s)" in message


def test_nih_table(tmp_path: Path) -> None:
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text(NIH_CSV)
    nested = tmp_path / "nih" / "images_002" / "images"
    nested.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(nested / "00000003_000.png")
    table = write_nih(csv, tmp_path / "nih", tmp_path / "m.csv")
    assert list(table["subject_id"]) == ["nih-00001", "nih-00001", "nih-00002", "nih-00003", "nih-00004"]
    assert table["path"][3] == "nih/images_002/images/00000003_000.png"  # found in the nested folder
    assert list(table["view"]) == ["PA", "PA", "PA", "AP", "AP"]
    assert list(table["sex"]) == ["M", "M", "M", "F", "F"]
    assert table["age"][3] == 81 and np.isnan(table["age"][4])  # '081Y' parsed, 414 dropped
    assert list(table["emphysema"]) == [0, 1, 0, 0, 0] and list(table["no_finding"]) == [0, 0, 1, 0, 0]
    assert list(table["nodule"]) == [0, 0, 0, 0, 1] and list(table["mass"]) == [0, 0, 0, 0, 1]
    assert "follow_up" not in table.columns


def test_nih_missing_columns(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("Image Index,Finding Labels\na.png,Mass\n")
    with pytest.raises(ManifestError, match="'Patient ID'"):
        nih_table(csv, tmp_path, tmp_path)


def test_cli_chexpert_nih_check(chexpert_csv: Path, tmp_path: Path) -> None:
    from embedx.cli import app

    runner = CliRunner()
    out = tmp_path / "m" / "chex.csv"
    result = runner.invoke(
        app,
        [
            "data",
            "chexpert",
            str(chexpert_csv),
            "--root",
            str(tmp_path),
            "--out",
            str(out),
            "--uncertain",
            "ones",
        ],
    )
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["cardiomegaly"].tolist() == [0, 1, 0, 0, 0, 0]
    check = runner.invoke(app, ["data", "check", str(out), "--no-files"])
    assert check.exit_code == 0, check.output
    assert "view" in check.output and "acquisition" in check.output and "patient" not in check.output.lower()
    nih_csv = tmp_path / "nih.csv"
    nih_csv.write_text(NIH_CSV)
    result = runner.invoke(
        app, ["data", "nih", str(nih_csv), "--root", str(tmp_path), "--out", str(tmp_path / "n.csv")]
    )
    assert result.exit_code == 0, result.output
    failing = runner.invoke(app, ["data", "check", str(out)])  # images do not exist
    assert failing.exit_code != 0
