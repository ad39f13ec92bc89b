"""The vectorised manifest load against the straightforward per-cell one, on small tricky manifests.

Loading a million-row manifest converts and tests each distinct value once, keys the usual paths without a
Python call per row and counts CSV fields with numpy (`identity.normalised_paths`, `manifest_values`,
`manifest_read._scan_simple_csv`). Each has a per-cell reference that it must match exactly: the same
table and dtypes, schema, row/line numbers, sample ids, warnings and error messages.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import yaml

import embedx.data.manifest as manifest_module
from embedx.data import manifest_read, manifest_values, missing_codes
from embedx.data.identity import normalised_path, normalised_paths, sample_id
from embedx.data.manifest import load_manifest
from embedx.data.manifest_values import equals_text, to_numbers


def _tricky_paths(root) -> list[str]:
    return [
        "img/0.png", "./img/1.png", "img//2.png", "img/./3.png", "img/../img/4.png", "img\\5.png",
        " img/6.png ", "img/7.png/", f"{root}/img/8.png", f"{root}//img/9.png", f"{root}/img/../img/10.png",
        str(root), f"{root}/", f"{root}/..dots.png", "..dots.png", "../up.png", "/elsewhere/11.png",
        "C:/data/12.png", "C:\\data\\13.png", "", "img/sp ace.png", "img/é.png", f"{root.parent}/x.png",
        str(root.parent), f"{root.parent}/{root.name}", f"{root.parent}/{root.name}x/14.png", ".", "..", "/",
        "//x/y.png", "///x.png", "img/15.png\t", "\u00a0img/16.png", "img/17.png\x1c", "img/.hidden",
        "é/ü.png", f"{root}/../{root.name}/img/18.png",
    ]


@pytest.mark.parametrize("dtype", [None, object, "string[pyarrow]"])
def test_normalised_paths_match_the_per_path_function(tmp_path, monkeypatch, dtype):
    values = _tricky_paths(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # "C:/x" is no absolute path here: it is keyed against the cwd
    index = np.arange(len(values)) * 2 + 5  # a table's index need not start at 0
    for root in (tmp_path, tmp_path.parent, None):
        keys = normalised_paths(pd.Series(values, index=index, dtype=dtype), root)
        assert list(keys.index) == list(index)
        assert list(keys) == [normalised_path(v, root) for v in values]


TEXTS = ["1", "-1", "3.5", "1e3", "1E400", "inf", "nan", "x", " 5", "5 ", "0x10", "1_000", "True", "007", "",
         "12345678901234567890", "-12345678901234567890", "9007199254740993", "+4", ".5", "unknown", "89+"]


@pytest.mark.parametrize("dtype", [None, object])
def test_numbers_and_text_matches_are_those_of_each_cell(dtype):
    rng = np.random.default_rng(0)
    for _ in range(200):
        pool = rng.choice(TEXTS, size=rng.integers(1, 6), replace=False)
        cells = [None if rng.random() < 0.2 else str(rng.choice(pool)) for _ in range(rng.integers(0, 25))]
        column = pd.Series(cells, dtype=dtype, name="c", index=np.arange(len(cells))[::-1])
        pd.testing.assert_series_equal(to_numbers(column), pd.to_numeric(column, errors="coerce"),
                                       check_exact=True)
        for text in ("x", "1", "", "5", " 5"):
            reference = column.astype(object).map(lambda v, t=text: isinstance(v, str) and v == t)
            assert equals_text(column, text).tolist() == reference.tolist()
    mixed = pd.Series([1, "1", 2.5, None, True, "x"], dtype=object)  # not all text: pandas' own call
    pd.testing.assert_series_equal(to_numbers(mixed), pd.to_numeric(mixed, errors="coerce"))


@pytest.mark.parametrize("text", [
    "path,a,b\nx.png,1,2\n\ny.png,1\nz.png,1,2,3\n  \nw.png,,\n",
    "\ufeffpath,a\r\nx.png,1\r\n\r\ny.png\r\nz.png,1,2",
    "path\nx.png\ny.png",
])
def test_csv_records_counted_with_numpy_match_the_csv_module(tmp_path, monkeypatch, text):
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    fast_problems: list[str] = []
    assert manifest_read._scan_simple_csv(path, []) is not None  # the numpy way is the one tested
    fast = manifest_read._scan_csv_records(path, fast_problems)
    monkeypatch.setattr(manifest_read, "_scan_simple_csv", lambda path, problems: None)
    slow_problems: list[str] = []
    assert manifest_read._scan_csv_records(path, slow_problems) == fast
    assert slow_problems == fast_problems


def _straightforward(monkeypatch) -> None:
    """Every load from here on takes the per-cell way: no column counts as plain text, paths are keyed one
    by one, the csv module reads every record and each cell is tried for zero padding."""
    for module in (manifest_values, manifest_module, missing_codes):
        monkeypatch.setattr(module, "plain_text", lambda column: False)
    monkeypatch.setattr(manifest_module, "normalised_paths",
                        lambda paths, root: paths.map(lambda p: normalised_path(p, root)))
    monkeypatch.setattr(manifest_module, "sample_ids", lambda paths, root=None, cohort="", salt="": [
        sample_id(p, root, cohort, salt) for p in paths])
    monkeypatch.setattr(manifest_read, "_scan_simple_csv", lambda path, problems: None)
    monkeypatch.setattr(manifest_read, "_any_padded", lambda text: True)


def _load(path, caplog) -> tuple:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="embedx"):
        try:
            m = load_manifest(path, check_files=False)
        except Exception as err:  # the message is what is compared
            outcome: tuple = (type(err).__name__, str(err))
        else:
            outcome = (m.table, m.schema, m.text_as_missing, m.coded_missing, m.lines, list(m.sample_ids()),
                       list(m.sample_ids("c", "salt")))
    return outcome, [(r.name, r.levelno, r.getMessage()) for r in caplog.records]


def _tricky_manifests(folder) -> list:
    n = 40
    rng = np.random.default_rng(1)
    paths = [f"img/{i}.png" for i in range(n)]
    paths[1:12] = ["./img/1.png", "img\\2.png", " img/3.png ", "../up/4.png", f"{folder}/img/5.png",
                   f"{folder}/img/../img/6.png", "/elsewhere/7.png", "img//8.png", "img/sp ace 9.png",
                   f"{folder}/..x/10.png", "C:/data/11.png"]
    table = pd.DataFrame({
        "path": paths,
        "subject_id": [f" s{i // 3}" if i % 7 == 0 else f"s{i // 3}" for i in range(n)],
        "site": rng.choice(["A", " A", "B ", "B", "  ", None], n),
        "sex": rng.choice(["F", "M", "U", None], n),
        "age": [rng.choice(["89+", "unknown", "-1"]) if i % 9 == 0 else str(20 + i) for i in range(n)],
        "code": rng.choice(["01", "1", "011", None], n),
        "finding": rng.choice(["0", "1", None], n),
        "score": [str(i) if i % 5 else "x" for i in range(n)],
        "mixed": [i if i % 3 else f"t{i}" for i in range(n)],
        "grade": [str(i % 4) for i in range(n)],
        "room": [str(i % 3 + 1) if i % 8 else "04" for i in range(1, n + 1)],  # "04" is not the first value
        "patient_name": [f"name {i}" for i in range(n)],
    })
    table.to_csv(folder / "inferred.csv", index=False)
    table.to_csv(folder / "declared.csv", index=False)
    (folder / "declared.yaml").write_text(yaml.safe_dump({"attributes": {
        "sex": {"kind": "binary", "role": "demographic", "missing": ["U"]},
        "age": {"kind": "continuous", "role": "demographic", "missing": [-1, "unknown"]},
        "finding": {"kind": "binary", "role": "clinical", "missing": [9]},
        "site": {"kind": "categorical", "role": "acquisition", "missing": ["B"]},
    }}))
    typed = table.drop(columns=["mixed"]).assign(  # Parquet keeps types: categories, booleans, nullable ints
        site=table["site"].astype("category"), flag=[i % 2 == 0 for i in range(n)],
        note=["" if i % 5 == 0 else "n" for i in range(n)],  # "" is missing, though nothing is stripped
        visits=pd.array([None if i % 6 == 0 else i % 3 for i in range(n)], dtype="Int64"))
    typed.to_parquet(folder / "typed.parquet", index=False)
    broken = table.copy()
    broken.loc[[4, 20], "path"] = [f"{folder}/img/0.png", "img/./0.png"]  # one file, three spellings
    broken.loc[7, "path"] = "  "
    broken.to_csv(folder / "broken.csv", index=False)
    return [folder / name for name in ("inferred.csv", "declared.csv", "typed.parquet", "broken.csv")]


def test_vectorised_load_matches_the_per_cell_load(tmp_path, monkeypatch, caplog):
    files = _tricky_manifests(tmp_path)
    fast = [_load(f, caplog) for f in files]
    _straightforward(monkeypatch)
    slow = [_load(f, caplog) for f in files]
    assert isinstance(fast[0][0][0], pd.DataFrame) and "duplicated path" in fast[-1][0][1]  # both ways run
    for (fast_outcome, fast_logs), (slow_outcome, slow_logs) in zip(fast, slow, strict=True):
        assert fast_logs == slow_logs
        if isinstance(fast_outcome[0], pd.DataFrame):
            pd.testing.assert_frame_equal(fast_outcome[0], slow_outcome[0], check_exact=True)
            assert fast_outcome[1:] == slow_outcome[1:]
        else:
            assert fast_outcome == slow_outcome
