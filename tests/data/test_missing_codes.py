"""Missing-value codes declared in the sidecar (`missing: [-1, 999]`), and the warning for undeclared ones."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedx.data.manifest import load_manifest, summarize_manifest, write_manifest
from embedx.data.missing_codes import code_mask
from embedx.data.schema import AttributeSpec, read_schema, write_schema
from embedx.errors import ManifestError


def _cohort(root: Path, n: int) -> pd.DataFrame:
    """`n` tiny PNGs under root/img (the manifest checks that each row's file exists), two per subject."""
    (root / "img").mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4), i % 256, dtype=np.uint8)).save(root / "img" / f"{i}.png")
    paths = [f"img/{i}.png" for i in range(n)]
    return pd.DataFrame({"path": paths, "subject_id": [f"s{i // 2}" for i in range(n)]})


def test_missing_codes_round_trip_through_the_sidecar_yaml(tmp_path):
    schema = {
        "age": AttributeSpec("age", "continuous", "demographic", missing=(-1, 999)),
        "sex": AttributeSpec("sex", "binary", "demographic", missing=("U", "unknown")),
        "grade": AttributeSpec("grade", "categorical", "clinical", missing=(-9.5, "-1", "no")),
        "site": AttributeSpec("site", "categorical", "acquisition"),
    }
    path = write_schema(schema, tmp_path / "m.yaml")
    assert read_schema(path) == schema
    text = path.read_text()
    assert text.count("missing:") == 3  # written only where declared: site's entry is as it always was
    # the YAML as a user writes it, and write_manifest keeps the codes in the sidecar it writes
    (tmp_path / "s.yaml").write_text(
        "attributes:\n  age: {kind: continuous, role: demographic, missing: [-1, 999, -1]}\n"
    )
    assert read_schema(tmp_path / "s.yaml")["age"].missing == (-1, 999)  # a repeat is dropped
    table = pd.DataFrame({"path": ["a.png", "b.png"], "age": [30, -1]})
    write_manifest(table, tmp_path / "out" / "m.csv", schema={"age": schema["age"]})
    assert read_schema(tmp_path / "out" / "m.yaml")["age"].missing == (-1, 999)


def test_invalid_missing_field_names_the_attribute_and_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "attributes:\n"
        "  age: {kind: continuous, role: demographic, missing: -1}\n"
        "  sex: {kind: binary, role: demographic, missing: [[U]]}\n"
        "  site: {kind: categorical, role: acquisition, missing: [{a: 1}]}\n"
        "  smoker: {kind: binary, role: clinical, missing: [no]}\n"
    )
    with pytest.raises(ManifestError) as info:
        read_schema(path)
    message = str(info.value)
    assert "attribute 'age' field 'missing': expected a list" in message
    assert "attribute 'sex' field 'missing': ['U'] is not a single value" in message
    assert "attribute 'site' field 'missing': {'a': 1} is not a single value" in message
    assert "attribute 'smoker' field 'missing': False is a YAML boolean" in message  # `no` unquoted


def test_declared_codes_in_a_continuous_column_load_as_missing(tmp_path, caplog):
    table = _cohort(tmp_path, 8)
    table["age"] = [34, -1, 61, 999, 47, -1, 29, np.nan]
    table.to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "m.yaml").write_text(
        "attributes:\n  age: {kind: continuous, role: demographic, missing: [-1, 999, 555]}\n"
    )
    with caplog.at_level(logging.INFO, logger="embedx.data.missing_codes"):
        m = load_manifest(tmp_path / "m.csv")
    assert m.missing_counts() == {"age": 4}  # the empty cell and the three coded ones
    assert m.table["age"].isna().tolist() == [False, True, False, True, False, True, False, True]
    assert m.table["age"].dropna().tolist() == [34, 61, 47, 29]
    assert m.coded_missing == {"age": {"-1": 2, "999": 1, "555": 0}}
    assert "'age': declared missing code(s) -1 -> 2 row(s), 999 -> 1 row(s), 555 -> 0 row(s)" in caplog.text
    assert "no row holds 555" in caplog.text  # a code that matches nothing may be a typo
    assert "-1 x2, 999 x1" in summarize_manifest(m)
    # the explicit --schema file goes through the same parser
    (tmp_path / "m.yaml").unlink()
    (tmp_path / "other.yaml").write_text(
        "attributes:\n  age: {kind: continuous, role: demographic, missing: [999]}\n"
    )
    m = load_manifest(tmp_path / "m.csv", schema_file=tmp_path / "other.yaml")
    assert m.missing_counts() == {"age": 2}


def test_a_code_matches_int_float_and_text_cells_but_not_other_numbers():
    assert code_mask(pd.Series([-1, -10, 3]), -1).tolist() == [True, False, False]
    assert code_mask(pd.Series([-1.0, -10.0, -1.5, np.nan]), -1).tolist() == [True, False, False, False]
    text = pd.Series(["-1", "-10", "-1.5", "U", None, "-1.0"], dtype=object)
    assert code_mask(text, -1).tolist() == [True, False, False, False, False, True]
    assert code_mask(text, "U").tolist() == [False, False, False, True, False, False]
    assert code_mask(pd.Series([True, 1, "1"], dtype=object), 1).tolist() == [False, True, True]  # no bools
    assert code_mask(pd.Series([999, 5]), "999").tolist() == [True, False]  # a quoted code, numeric column


def test_codes_match_however_the_csv_column_was_read(tmp_path):
    table = _cohort(tmp_path, 6)
    table["ints"] = [-1, -10, 5, -1, 7, 8]  # read as int64
    table["floats"] = [-1.0, -10.0, 5.5, -1.5, 7.25, np.nan]  # read as float64
    table["codes"] = ["-1", "-10", "-1.5", "U", "A", "-1"]  # read as text (U, A are no numbers)
    table.to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "m.yaml").write_text(
        "attributes:\n"
        "  ints: {kind: categorical, role: clinical, missing: [-1]}\n"
        "  floats: {kind: continuous, role: clinical, missing: [-1]}\n"
        "  codes: {kind: categorical, role: clinical, missing: [-1, U]}\n"
    )
    m = load_manifest(tmp_path / "m.csv")
    assert m.table["ints"].isna().tolist() == [True, False, False, True, False, False]
    assert m.table["floats"].isna().tolist() == [True, False, False, False, False, True]
    assert m.table["codes"].isna().tolist() == [True, False, False, True, False, True]
    assert m.table["codes"].dropna().tolist() == ["-10", "-1.5", "A"]  # -10 and -1.5 are not -1
    assert m.missing_counts() == {"ints": 2, "floats": 2, "codes": 3}


def test_binary_column_with_a_declared_third_code_loads_as_binary(tmp_path):
    table = _cohort(tmp_path, 8)
    table["sex"] = ["M", "F", "U", "F", " U", "M", "F", None]  # " U": spaces are stripped before matching
    table["finding"] = [0, 1, "U", 1, 0, 0, "U", 1]
    table.to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "m.yaml").write_text(
        "attributes:\n"
        "  sex: {kind: binary, role: demographic, missing: [U]}\n"
        "  finding: {kind: binary, role: clinical, missing: [U]}\n"
    )
    m = load_manifest(tmp_path / "m.csv")
    assert m.schema["sex"].kind == "binary" and m.schema["finding"].kind == "binary"
    assert sorted(m.table["sex"].dropna().unique()) == ["F", "M"]
    assert m.missing_counts() == {"sex": 3, "finding": 2}
    # 0/1 without the U rows reads as numbers, as the column would with empty cells
    assert pd.api.types.is_numeric_dtype(m.table["finding"])
    assert sorted(m.table["finding"].dropna().unique()) == [0, 1]


def test_sentinel_in_a_continuous_column_is_warned_about_with_the_yaml_to_declare_it(tmp_path, caplog):
    rng = np.random.default_rng(0)
    n = 200
    table = _cohort(tmp_path, n)
    ages = rng.integers(18, 91, n)
    ages[rng.choice(n, 10, replace=False)] = -1  # 5 % coded unknown
    table["age"] = ages
    table["clean_age"] = rng.integers(18, 91, n)  # an ordinary age column
    table["smooth_age"] = rng.integers(20, 100, n)  # 99 is only the top of a smooth range
    table.to_csv(tmp_path / "m.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="embedx.data.missing_codes"):
        m = load_manifest(tmp_path / "m.csv")
    warnings = [r.getMessage() for r in caplog.records if r.name == "embedx.data.missing_codes"]
    assert len(warnings) == 1, warnings
    assert "'age'" in warnings[0] and "-1 in 10 of 200 rows (5.0 %)" in warnings[0]
    assert "m.yaml:  age: {kind: continuous, role: demographic, missing: [-1]}" in warnings[0]
    assert (m.table["smooth_age"] == 99).sum() >= 2  # the smooth column holds 99 and is not warned about
    assert m.missing_counts()["age"] == 0 and (m.table["age"] == -1).sum() == 10  # only warned, not changed
    # declared, the code is missing and the warning is gone
    caplog.clear()
    (tmp_path / "m.yaml").write_text(
        "attributes:\n  age: {kind: continuous, role: demographic, missing: [-1]}\n"
    )
    with caplog.at_level(logging.WARNING, logger="embedx.data.missing_codes"):
        m = load_manifest(tmp_path / "m.csv")
    assert not [r for r in caplog.records if r.name == "embedx.data.missing_codes"]
    assert m.missing_counts()["age"] == 10
