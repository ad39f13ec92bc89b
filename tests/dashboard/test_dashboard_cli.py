"""`embedx dashboard`: the Streamlit command line it builds, the packaged app it points at, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from embedx.dashboard.launch import APP, command


def test_command_is_headless_on_loopback_without_usage_stats_and_passes_the_store(tmp_path: Path) -> None:
    argv = command(tmp_path / "s.h5", 8765, "127.0.0.1")
    assert argv[:4] == [sys.executable, "-m", "embedx.dashboard.serve", "run"] and Path(argv[4]) == APP
    options = dict(zip(argv[5:-3:2], argv[6:-3:2], strict=True))
    assert options["--server.headless"] == "true"
    assert options["--server.address"] == "127.0.0.1" and options["--server.port"] == "8765"
    assert options["--browser.gatherUsageStats"] == "false"
    assert argv[-3:] == ["--", "--store", str(tmp_path / "s.h5")]


def test_the_app_ships_inside_the_package() -> None:
    assert APP.is_file() and APP.parent.name == "dashboard" and APP.parent.parent.name == "embedx"
    pages = sorted(p.stem for p in (APP.parent / "views").glob("*.py") if p.stem != "__init__")
    assert pages == sorted(
        ["map", "neighbours", "compare", "clusters", "counterfactual", "probes", "fairness", "controls"]
    )


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "embedx", "dashboard", str(tmp_path / "nope.h5")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    text = " ".join((result.stderr + result.stdout).split())
    assert "nope.h5 does not exist" in text and "Traceback" not in text


def test_a_file_that_is_not_a_store_is_refused_before_the_server_starts(tmp_path: Path) -> None:
    folder = tmp_path / ("a-folder-name-long-enough-that-the-path-cannot-fit-in-eighty-columns" * 2)
    folder.mkdir()
    bogus = folder / "notes.h5"
    bogus.write_text("not hdf5")
    result = subprocess.run(
        [sys.executable, "-m", "embedx", "dashboard", str(bogus)], capture_output=True, text=True, timeout=60
    )
    text = result.stderr + result.stdout
    # the path whole, not broken across lines where the message meets the terminal's width (it was, at 80)
    assert result.returncode == 2 and str(bogus) in text and "Traceback" not in text
    assert "URL" not in text


def test_binding_beyond_this_machine_is_warned_about() -> None:
    from embedx.dashboard.launch import exposure_warning

    assert exposure_warning("127.0.0.1") == "" and exposure_warning("localhost") == ""
    assert "other machines" in exposure_warning("0.0.0.0")
    assert "other machines" in exposure_warning("10.1.2.3")
