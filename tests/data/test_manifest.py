"""Manifest reading and validation, the attribute schema, sample ids and the check summary."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedx.data.manifest import load_manifest, sample_id, summarize_manifest, write_manifest
from embedx.data.schema import AttributeSpec, infer_kind, infer_role, read_schema
from embedx.errors import ManifestError


@pytest.fixture
def cohort(tmp_path):
    """Six tiny PNGs, three subjects, a NaN age, a site and a binary finding."""
    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 10, dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    table = pd.DataFrame(
        {
            "path": [f"img/{i}.png" for i in range(6)],
            "subject_id": ["s0", "s0", "s1", "s1", "s2", "s2"],
            "site": ["north", "south", "north", "east", "south", "east"],
            "age": [34.5, np.nan, 61.0, 47.2, 29.9, 55.1],
            "finding": [0, 1, 0, 1, 1, 0],
        }
    )
    return tmp_path, table


def test_csv_loads_with_inferred_schema_and_nan_age_counted_not_filled(cohort, caplog):
    root, table = cohort
    table.to_csv(root / "m.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="embedx.data.manifest"):
        m = load_manifest(root / "m.csv")
    assert "inferred as site (categorical/acquisition), age (continuous/demographic)" in caplog.text
    assert list(m.table.columns) == ["path", "subject_id", "site", "age", "finding"]
    assert m.attributes == ["site", "age", "finding"]
    assert m.schema["site"] == AttributeSpec("site", "categorical", "acquisition", inferred=True)
    assert m.schema["age"].kind == "continuous" and m.schema["age"].role == "demographic"
    assert m.schema["finding"].kind == "binary" and m.schema["finding"].role == "clinical"
    assert m.missing_counts() == {"site": 0, "age": 1, "finding": 0}
    assert np.isnan(m.table.loc[1, "age"])  # never filled
    assert m.absolute_path(2) == root / "img" / "2.png"
    assert m.n_subjects == 3


def test_parquet_loads_the_same_as_csv(cohort):
    root, table = cohort
    table.to_csv(root / "m.csv", index=False)
    table.to_parquet(root / "m.parquet", index=False)
    a, b = load_manifest(root / "m.csv"), load_manifest(root / "m.parquet")
    pd.testing.assert_frame_equal(a.table, b.table, check_dtype=False)
    assert a.schema == b.schema
    np.testing.assert_array_equal(a.sample_ids(), b.sample_ids())


def test_sample_id_is_the_hash_of_the_cohort_relative_path(tmp_path):
    import hashlib

    assert len(sample_id("img/0.png")) == 16 and int(sample_id("img/0.png"), 16) >= 0
    # plain relative paths keep the id they always had (stores written before keep matching)
    assert sample_id("a/b.dcm") == hashlib.sha1(b"a/b.dcm").hexdigest()[:16]
    root = tmp_path / "cohort"
    same = ["img/0.png", "./img/0.png", "img//0.png", "img\\0.png", str(root / "img" / "0.png"),
            f"{root}/sub/../img/0.png"]
    assert len({sample_id(p, root) for p in same}) == 1
    # outside the root an absolute path stays absolute; a cohort name keeps two cohorts apart
    assert sample_id("/elsewhere/img/0.png", root) != sample_id("img/0.png", root)
    assert sample_id("img/0.png", root, "padchest") != sample_id("img/0.png", root)
    assert sample_id("img/0.png", root, "padchest") != sample_id("img/0.png", root, "nih")
    # a store's salt: the same path gives another id in every store, and no id an outsider can recompute
    salted = {sample_id("img/0.png", root, "", salt) for salt in ("a" * 32, "b" * 32)}
    assert len(salted) == 2 and sample_id("img/0.png", root) not in salted
    assert sample_id("./img/0.png", root, "", "a" * 32) == sample_id("img/0.png", root, "", "a" * 32)


def test_one_file_written_two_ways_is_a_duplicated_path(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "0.png").write_bytes(b"x")
    pd.DataFrame({"path": ["img/0.png", str(tmp_path / "img" / "0.png")]}).to_csv(tmp_path / "m.csv",
                                                                                  index=False)
    with pytest.raises(ManifestError, match=r"1 duplicated path\(s\):\n    one file written as 'img/0.png' "
                       r"\(row 1 \(line 2\)\), '/"):
        load_manifest(tmp_path / "m.csv")


def test_missing_path_column_is_named(tmp_path):
    pd.DataFrame({"file": ["a.png"], "site": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "m.csv")
    assert "no 'path' column" in str(info.value) and "'file'" in str(info.value)
    pd.DataFrame({"Path": ["a.png"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match="case-sensitive"):
        load_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path;site\na.png;x\n")
    with pytest.raises(ManifestError, match="other than commas"):
        load_manifest(tmp_path / "m.csv")


def test_duplicates_missing_files_and_bad_rows_reported_together(cohort):
    root, table = cohort
    rows = [*table["path"], "img/0.png", "img/gone1.png", "img/gone2.png", "img/3.png"]
    text = "path,subject_id,site\n" + "".join(f"{p},s{i},north\n" for i, p in enumerate(rows))
    text += "img/5.png,s99,north,EXTRA\n"  # a row with one field too many: data row 11, file line 12
    (root / "m.csv").write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifest(root / "m.csv")
    message = str(info.value)
    # Every kind of problem in one message, each with its rows (row N = N-th data row; line = file line).
    assert "2 duplicated path(s)" in message
    assert "'img/0.png' at row 1 (line 2), row 7 (line 8)" in message
    assert "'img/3.png' at row 4 (line 5), row 10 (line 11)" in message
    assert "2 file(s) do not exist" in message
    assert "row 8 (line 9): img/gone1.png" in message and "row 9 (line 10): img/gone2.png" in message
    assert "row 11 (line 12): 4 fields, header has 3" in message


def test_missing_files_listing_is_capped_with_a_count(tmp_path):
    pd.DataFrame({"path": [f"x{i}.png" for i in range(50)]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "m.csv")
    message = str(info.value)
    assert "50 file(s) do not exist" in message and "... and 30 more" in message
    m = load_manifest(tmp_path / "m.csv", check_files=False)
    assert len(m) == 50


def test_missing_subject_column_means_one_subject_per_row(cohort, caplog):
    root, table = cohort
    table.drop(columns="subject_id").to_csv(root / "m.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="embedx.data.manifest"):
        m = load_manifest(root / "m.csv")
    assert "no 'subject_id' column" in caplog.text
    assert m.table["subject_id"].nunique() == 6
    assert m.table.loc[0, "subject_id"] == sample_id("img/0.png")


def test_sidecar_yaml_declares_and_overrides_inference(cohort):
    root, table = cohort
    table.to_csv(root / "m.csv", index=False)
    (root / "m.yaml").write_text(
        "attributes:\n"
        "  finding: {kind: categorical, role: clinical}\n"
        "  site: {kind: categorical, role: clinical}\n"
    )
    m = load_manifest(root / "m.csv")
    assert m.schema["finding"] == AttributeSpec("finding", "categorical", "clinical", inferred=False)
    assert m.schema["site"].role == "clinical" and not m.schema["site"].inferred
    assert m.schema["age"].inferred
    # An explicit schema file wins over the sidecar, attribute by attribute.
    (root / "other.yaml").write_text("attributes:\n  site: {kind: categorical, role: acquisition}\n")
    m2 = load_manifest(root / "m.csv", schema_file=root / "other.yaml")
    assert m2.schema["site"].role == "acquisition" and m2.schema["finding"].kind == "categorical"


def test_unknown_kind_or_role_names_attribute_and_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "attributes:\n  age: {kind: numeric, role: demographic}\n  site: {kind: binary, role: vendor}\n"
    )
    with pytest.raises(ManifestError) as info:
        read_schema(path)
    message = str(info.value)
    assert "attribute 'age' field 'kind': 'numeric'" in message
    assert "attribute 'site' field 'role': 'vendor'" in message


def test_declared_continuous_with_text_values_is_reported_by_row(cohort):
    root, table = cohort
    table = table.astype({"age": object})
    table.loc[3, "age"] = "forty"
    table.to_csv(root / "m.csv", index=False)
    (root / "m.yaml").write_text("attributes:\n  age: {kind: continuous, role: demographic}\n")
    with pytest.raises(ManifestError, match=r"(?s)'age' is declared continuous.*row 4 \(line 5\): 'forty'"):
        load_manifest(root / "m.csv")


def test_write_manifest_round_trip_with_sidecar(cohort):
    root, table = cohort
    schema = {"finding": AttributeSpec("finding", "binary", "clinical")}
    out = write_manifest(table, root / "out" / "m.parquet", schema=schema)
    assert (root / "out" / "m.yaml").exists()
    sidecar = read_schema(root / "out" / "m.yaml")
    assert set(sidecar) == {"site", "age", "finding"}  # undeclared ones pinned as inferred at write time
    (root / "out" / "img").symlink_to(root / "img")
    m = load_manifest(out)
    assert not any(s.inferred for s in m.schema.values())
    assert m.schema["age"].kind == "continuous"


def test_inference_rules():
    assert infer_kind(pd.Series([1.5, 2.25, 3.0, np.nan])) == "continuous"
    assert infer_kind(pd.Series(range(40))) == "continuous"
    assert infer_kind(pd.Series([0, 1, 2, 3, 1])) == "categorical"  # few integer codes
    assert infer_kind(pd.Series(["M", "F", None, "F"])) == "binary"
    assert infer_kind(pd.Series(["GE", "Siemens", "Philips"])) == "categorical"
    assert infer_role("ManufacturerModelName") == "acquisition"
    assert infer_role("scanner_model") == "acquisition"
    assert infer_role("kvp") == "acquisition"
    assert infer_role("PatientAge") == "demographic"
    assert infer_role("bmi") == "demographic"
    assert infer_role("pleural_effusion") == "clinical"


def test_summary_for_data_check(cohort):
    root, table = cohort
    table.to_csv(root / "m.csv", index=False)
    (root / "m.yaml").write_text("attributes:\n  finding: {kind: binary, role: clinical}\n")
    text = summarize_manifest(load_manifest(root / "m.csv"))
    assert "rows: 6" in text and "subjects: 3" in text
    age_line = next(line for line in text.splitlines() if line.startswith("age"))
    assert "continuous" in age_line and "demographic" in age_line and "1 (16.7%)" in age_line
    assert "(inferred)" in age_line
    finding_line = next(line for line in text.splitlines() if line.startswith("finding"))
    assert "(inferred)" not in finding_line
    assert "0: 3 (3)" in finding_line and "1: 3 (3)" in finding_line  # every subject has both
    site_line = next(line for line in text.splitlines() if line.startswith("site"))
    assert "north: 2 (2)" in site_line and "values: subjects (images)" in text


def test_a_numeric_column_with_a_few_text_values_is_continuous_and_says_which(tmp_path, caplog) -> None:
    """Ages with 'unknown', '89+' and 'n/a' among them: continuous, the text rows missing and named —
    not a 100-level category. Declared continuous, the same; mostly text, an error naming the rows."""
    import logging

    from embedx.data.manifest import load_manifest, summarize_manifest

    rng = np.random.default_rng(0)
    ages = [f"{a:.0f}" for a in rng.uniform(20, 88, 97)] + ["unknown", "89+", "n/a"]
    for i in range(100):
        (tmp_path / f"{i}.png").write_bytes(b"")
    pd.DataFrame({"path": [f"{i}.png" for i in range(100)], "age": ages}).to_csv(
        tmp_path / "m.csv", index=False
    )
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(tmp_path / "m.csv", check_files=False)
    assert manifest.schema["age"].kind == "continuous"
    assert manifest.table["age"].isna().sum() == 3  # "n/a" is read as missing by the CSV reader itself
    assert manifest.text_as_missing["age"] == {"unknown": 1, "89+": 1}
    assert "'89+'" in caplog.text and "count as missing" in caplog.text
    assert "'unknown' x1" in summarize_manifest(manifest)
    (tmp_path / "m.yaml").write_text("attributes:\n  age: {kind: continuous, role: demographic}\n")
    declared = load_manifest(tmp_path / "m.csv", check_files=False)
    assert declared.table["age"].isna().sum() == 3 and not declared.schema["age"].inferred
    words = pd.DataFrame({"path": [f"{i}.png" for i in range(100)], "age": ["old"] * 50 + ["42"] * 50})
    words.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match="declared continuous but 50 value"):
        load_manifest(tmp_path / "m.csv", check_files=False)


def _write(tmp_path, text: str):
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_zero_padded_codes_stay_apart_and_padded_quantities_are_numbers(tmp_path, caplog) -> None:
    """Scanner codes '01' / '1' / '011' are three scanners, not two numbers; declared categorical, the
    same. Ages written '030', '031', ... are codes until declared continuous (40 zero-padded site codes are
    no quantity), then numbers; fractions ('0.5', '00') are numbers."""
    rows = ["path,subject_id,scanner,age"]
    scanners = ["01", "1", "011", "02"]
    for i in range(40):
        rows.append(f"{i}.png,s{i // 2},{scanners[i % 4]},{30 + i:03d}")
    path = _write(tmp_path, "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(path, check_files=False)
    assert sorted(manifest.table["scanner"].unique()) == ["01", "011", "02", "1"]
    assert manifest.schema["scanner"].kind == "categorical"
    assert "'01'" in caplog.text and "leading zeros" in caplog.text
    assert manifest.schema["age"].kind == "categorical"
    (tmp_path / "m.yaml").write_text("attributes:\n  scanner: {kind: categorical, role: acquisition}\n"
                                     "  age: {kind: continuous, role: demographic}\n")  # fmt: skip
    declared = load_manifest(path, check_files=False)
    assert declared.table["scanner"].nunique() == 4
    assert declared.table["age"].dtype.kind in "if" and declared.table["age"].iloc[0] == 30
    (tmp_path / "m.yaml").unlink()
    doses = ["0", "00", "0.5", "1", "2.5"]
    fractions = _write(tmp_path, "path,dose\n" + "".join(f"{i}.png,{v}\n" for i, v in enumerate(doses)))
    assert load_manifest(fractions, check_files=False).schema["dose"].kind == "continuous"


def test_spaces_around_values_do_not_split_a_category(tmp_path, caplog) -> None:
    path = _write(tmp_path, "path,subject_id,site\na.png,s1, A\nb.png,s2,A\nc.png,s3,B \nd.png,s4,B\n"
                            "e.png,s5,   \n")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(path, check_files=False)
    assert manifest.table["site"].tolist()[:4] == ["A", "A", "B", "B"]
    assert pd.isna(manifest.table["site"].iloc[4])  # a cell of spaces is missing, not a class ""
    assert "3 value(s) had spaces" in caplog.text
    frame = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "site": pd.Categorical([" A", "A", "B "])})
    frame.to_parquet(tmp_path / "m.parquet")
    assert load_manifest(tmp_path / "m.parquet", check_files=False).table["site"].tolist() == ["A", "A", "B"]


def test_a_column_named_twice_and_a_misspelt_subject_column_are_errors(tmp_path) -> None:
    path = _write(tmp_path, "path,site,path \na.png,A,a.png\n")
    with pytest.raises(ManifestError, match="'path' appear more than once"):
        load_manifest(path, check_files=False)
    path = _write(tmp_path, "path,site,site\na.png,A,B\n")  # pandas would read the second as 'site.1'
    with pytest.raises(ManifestError, match="'site' appear more than once"):
        load_manifest(path, check_files=False)
    path = _write(tmp_path, "path,Subject_ID,site\na.png,s1,A\nb.png,s1,B\n")
    with pytest.raises(ManifestError, match="'Subject_ID' looks like one"):
        load_manifest(path, check_files=False)


def test_identifier_columns_of_a_hospital_export_are_left_out_and_said_so(tmp_path, caplog):
    """A RIS export's patient name, birth date and accession columns were copied into the store as
    attributes, and the names into `probe --json`; they are left out unless declared, and a text column with
    a distinct value per subject is warned about."""
    n = 30
    pd.DataFrame({
        "path": [f"img/{i}.png" for i in range(n)],
        "subject_id": [f"s{i}" for i in range(n)],
        "Patient Name": [f"DOE^JOHN{i}" for i in range(n)],
        "birth_date": ["1940-01-01"] * n,
        "AccessionNumber": [f"ACC{i}" for i in range(n)],
        "site": ["a", "b"] * (n // 2),
        "note": [f"seen by Dr X on visit {i}" for i in range(n)],
        "name": ["kept"] * n,
        "PatientID (MRN)": 100000 + np.arange(n),  # numbers, under a decorated name
        "mrn_2": 200000 + np.arange(n),
        "dosage": np.arange(n) % 3,  # holds "dos", not an identifier
    }).to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "m.yaml").write_text("attributes:\n  name: {kind: categorical, role: clinical}\n")
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(tmp_path / "m.csv", check_files=False)
    assert set(manifest.attributes) == {"site", "note", "name", "dosage"}
    assert ("'Patient Name', 'birth_date', 'AccessionNumber', 'PatientID (MRN)', 'mrn_2' look like patient "
            "identifiers") in caplog.text
    assert "column 'note' has a distinct value for nearly every subject" in caplog.text
    assert "DOE" not in caplog.text


def test_a_sex_that_differs_within_a_subject_and_a_single_valued_column_are_said(tmp_path, caplog):
    """One image of two patients with the other sex: they were counted in both groups without a word; a
    scanner column of one value got 'fewer than 2 groups large enough' from fairness, much later."""
    n = 12
    pd.DataFrame({
        "path": [f"img/{i}.png" for i in range(n)],
        "subject_id": [f"Doe^P{i // 3}" for i in range(n)],  # ids may be names: rows are named instead
        "sex": ["F", "F", "M", "M", "M", "M", "F", "F", "F", "M", "M", "F"],
        "view": ["PA", "AP", "PA"] * 4,  # varies within subjects, as views do: not warned
        "scanner": ["GE"] * n,
    }).to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "m.yaml").write_text("attributes:\n  sex: {kind: binary, role: demographic}\n")
    with caplog.at_level(logging.WARNING):
        load_manifest(tmp_path / "m.csv", check_files=False)
    assert "attribute 'sex' differs between the images of 2 subject(s) (6 rows; first: row 1" in caplog.text
    assert "attribute 'scanner' has one value (GE)" in caplog.text
    assert "'view' differs" not in caplog.text and "Doe" not in caplog.text
