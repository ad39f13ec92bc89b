"""`embedx data check` finds files that exist but are no readable image (and `--read` decodes them all).

The review's cohort had a truncated DICOM, a zero-byte `.dcm` and a text file named `.dcm`; `data check`
passed them with exit status 0 and the first sign was a warning during training."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedx.cli import app
from embedx.errors import EmbedxError

PHI = ("DOE", "JOHN", "4400100")


@pytest.fixture
def hospital(tmp_path, dicom_writer):
    """Rows 1-2 fine (DICOM, PNG); 3 truncated, 4 zero bytes, 5 text named .dcm, 6 a broken PNG; row 7 a
    DICOM whose header is sound but whose pixels cannot be decoded (a name typed into a coded field)."""
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    folder = tmp_path / "DOE^JOHN_4400100"
    folder.mkdir()
    good = dicom_writer(folder / "good.dcm", pixels)
    Image.fromarray(pixels.astype(np.uint8)).save(folder / "good.png")
    data = good.read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) - 300])
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "text.dcm").write_text("seen by Dr House; JOHN ok\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    ds = pydicom.dcmread(good)
    ds.PatientName = "DOE^JOHN"
    ds.PhotometricInterpretation = "DOE^JOHN"
    ds.save_as(folder / "coded.dcm")
    names = ["good.dcm", "good.png", "cut.dcm", "empty.dcm", "text.dcm", "broken.png", "coded.dcm"]
    pd.DataFrame({"path": [f"{folder.name}/{n}" for n in names],
                  "subject_id": ["4400100"] * len(names)}).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def _check(*args: str) -> tuple[int, str]:
    """Exit status as `embedx` gives it (a user error: 2) and everything printed."""
    result = CliRunner().invoke(app, ["data", "check", *args])
    if isinstance(result.exception, EmbedxError):  # `embedx.cli.main` prints it and exits 2
        return 2, result.output + str(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _exit_status(*args: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "embedx", "data", "check", *args], capture_output=True,
                         text=True, timeout=300)
    return out.returncode, out.stdout + out.stderr


def _listed(output: str) -> dict[str, str]:
    """{'row N (line L)': reason} of the unreadable-file lines of the error."""
    out = {}
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("row ") and (".dcm: " in line or ".png: " in line):
            where, _, rest = line.partition(": ")
            out[where] = rest.split(": ", 1)[1]
    return out


def test_data_check_finds_empty_truncated_and_foreign_files_by_default(hospital):
    code, output = _exit_status(str(hospital))
    assert code == 2, output
    listed = _listed(output)
    assert set(listed) == {"row 3 (line 4)", "row 4 (line 5)", "row 5 (line 6)", "row 6 (line 7)"}, listed
    assert "truncated" in listed["row 3 (line 4)"]
    assert "empty file" in listed["row 4 (line 5)"]
    assert "not a DICOM file" in listed["row 5 (line 6)"]
    assert "--read" in output  # the cheap check says that a full decode finds more


def test_read_decodes_every_image_and_names_only_generic_reasons(hospital):
    code, output = _check(str(hospital), "--read")
    assert code == 2, output
    listed = _listed(output)
    assert "row 7 (line 8)" in listed and len(listed) == 5, listed
    reasons = " ".join(listed.values())
    for value in PHI:  # the folder name is in the path (terminal only); no header value in any reason
        assert value not in reasons, reasons


def test_a_clean_manifest_passes_and_says_what_was_checked(hospital):
    table = pd.read_csv(hospital).iloc[:2]
    table.to_csv(hospital.parent / "clean.csv", index=False)
    code, output = _check(str(hospital.parent / "clean.csv"))
    assert code == 0 and "image files: all 2 exist, sizes and headers readable" in output, output
    code, output = _check(str(hospital.parent / "clean.csv"), "--read")
    assert code == 0 and "image files: all 2 decoded in full" in output, output
    code, output = _check(str(hospital), "--no-files")  # no look at the files at all
    assert code == 0 and "image files" not in output, output


def test_read_shows_progress(hospital, monkeypatch):
    """Decoding a cohort takes minutes: the loop reports progress like every other long step."""
    import embedx.data.readable as readable

    seen = []

    def bar(total, description, unit="it"):
        seen.append((total, description, unit))
        return contextlib.nullcontext(lambda n=1, **_: None)

    monkeypatch.setattr(readable, "progress_bar", bar)
    _check(str(hospital), "--read")
    assert seen == [(7, "data check: decoding images", "img")]
