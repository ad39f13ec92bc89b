"""Whole-flow privacy test: a DICOM cohort full of PHI goes through every command, and no PHI comes out.

24 patients (49 files) in folders named after them (`KRONWALDT^ELSPETHA_MRN4829170/IMG0001.dcm`), each file
carrying PatientName, PatientID, OtherPatientIDs, PatientBirthDate, AccessionNumber, InstitutionAddress,
ReferringPhysicianName, operator and performing physician names, study dates, StudyID, UIDs, the device
serial number, and dates and names typed into free text (StudyDescription, SeriesDescription, ImageComments,
PatientComments). One birth date is non-conformant (ISO text in a DA element, as some archives write it),
and one file has pixel data too short for its header, so the failure paths run too (a run's skipped.csv,
failure reasons in the store and shift.json).

The flow runs as a user runs it, through the CLI in subprocesses with `-v`: data scan, data check, train vae
and dae, encode both, project (pca), probe, fairness, calibrate, control background, experiment shift,
report (which adds the cross-site matrices, clusters and distribution tests), store info, dashboard. Then:

- every file written under the test's folder (all but the input DICOMs; the commands' HOME, caches and
  TMPDIR point there too) is searched byte for byte, case-insensitively, as UTF-8 and UTF-16, and inside zip
  members, gzip streams, PNG text chunks, base64 data URIs and every name, string dataset and attribute of
  an HDF5 file (compressed or not);
- every command's stdout and stderr (all warnings shown, no line wrapping) is searched;
- the dashboard server is fetched over plain HTTP (index, health, host config, agent API document, every
  page's URL), every page is run over its websocket as a browser runs it (the map again with a lasso
  selection sent as the chart's widget state), and every message and every /media file they link (the
  selection's CSV download) is searched;
- every page is run under Streamlit's AppTest (the map with a selection and with one clicked point, the
  neighbours of a row, a cluster made the selection, the counterfactual direction fitted) and every
  rendered element (its protobuf, dataframes as CSV) is searched.

Image paths may appear only where embedx documents them, for the user's own machine: the manifest's `path`
column, a training run's `skipped.csv`, and the terminal of a command that could not read a file. Those
exact path strings are cut out there before searching; any other trace of a patient's folder still fails.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------------------------- the cohort

LAST = [
    "KRONWALDT", "VELLACOURT", "BRIXHAMPTON", "QUILLAMORE", "OSTERFELDT", "PENDRAGOSS", "MARCHBANKE",
    "TULLIVERE", "HOLLOWAYNE", "ZWINGLERT", "FARQUHARDT", "GLENDOWERS", "ASHCOMBEL", "DRUMMONDEX",
    "WETHERBYN", "CALLOWFIRTH", "RAVENSCARR", "THISTLEWODE", "BRACKENRYDE", "MOORCROFTE", "LINDQVARST",
    "SCHWANBECKE", "ORMEROYDE", "PEVENSEYT",
]  # fmt: skip
FIRST = [
    "ELSPETHA", "TOBIAHN", "MIRABELLE", "CORNELIO", "GWENDOLYNE", "LEOPOLDO", "ROSAMUNDE", "BARNABEO",
    "PHILIPPINA", "AUGUSTINO", "HYACINTHE", "FERDINANDO", "WILHELMINE", "ALISTAIRO", "PERPETUAE", "LUCIANUS",
    "OTTILIEA", "EUSTACIO", "CLEMENTYNE", "THADDEON", "BRUNHILDEA", "IGNATIOS", "MARGUERYTE", "SEBASTIANO",
]  # fmt: skip
REFERRERS = [("THORNBURIE", "AGATHEA"), ("MACQUILLANE", "OSWINETTE"), ("DELACROIXE", "BALTHASAR")]
STAFF = ["HALVERSTAM^IDONEA", "PRYCEWORTHE^ODALRIC"]  # operator, performing physician (every file)
ADDRESS = "{n} Quillfeather Lane, Brackmoor-upon-Tweeze"
N_PATIENTS = 24
IMAGES_PER_PATIENT = 2
SIZE = 64
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
# Kept on purpose (acquisition attributes the scanner is designed to read): these may appear anywhere.
MANUFACTURERS = ("AlphaMed Systems", "BetaScan Imaging")
INSTITUTIONS = ("North Clinic", "South Clinic")


@dataclass(frozen=True)
class Patient:
    index: int

    @property
    def last(self) -> str:
        return LAST[self.index]

    @property
    def first(self) -> str:
        return FIRST[self.index]

    @property
    def mrn_digits(self) -> str:
        return str(4829170 + 37 * self.index)

    @property
    def mrn(self) -> str:
        return f"MRN{self.mrn_digits}"

    @property
    def folder(self) -> str:
        return f"{self.last}^{self.first}_{self.mrn}"

    @property
    def birth(self) -> date:
        return date(1931 + self.index, 1 + self.index % 12, 3 + self.index)

    @property
    def study(self) -> date:
        return date(2003 + self.index % 9, 1 + (5 * self.index) % 12, 2 + self.index)

    @property
    def accession(self) -> str:
        return f"ACN{self.index:02d}{self.last[:3]}Q"

    @property
    def referrer(self) -> tuple[str, str]:
        return REFERRERS[self.index % len(REFERRERS)]

    @property
    def manufacturer(self) -> str:
        return MANUFACTURERS[self.index % 2]

    @property
    def sex(self) -> str:
        return "F" if (self.index // 2) % 2 else "M"


PATIENTS = [Patient(i) for i in range(N_PATIENTS)]


def date_forms(day: date) -> list[str]:
    """The ways a date is written: DICOM DA, ISO, European, US, and slashed ISO."""
    return sorted({f"{day:%Y%m%d}", f"{day:%Y-%m-%d}", f"{day:%d.%m.%Y}", f"{day:%m/%d/%Y}",
                   f"{day:%d/%m/%Y}", f"{day:%Y/%m/%d}"})  # fmt: skip


def pixels(patient: Patient, k: int) -> tuple[np.ndarray, int]:
    """A 64 px image whose content depends on the manufacturer (a bright disc vs stripes) plus noise."""
    rng = np.random.default_rng(100 * patient.index + k)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if patient.index % 2 == 0:  # AlphaMed: 12-bit in 16, a disc
        disc = ((yy - 30) ** 2 + (xx - 24) ** 2) < 14**2
        image = 600 + 2400 * disc + rng.normal(0, 150, (SIZE, SIZE))
        return np.clip(image, 0, 4095).astype(np.uint16), 16
    stripes = (yy // 6) % 2 == 0  # BetaScan: 8-bit, horizontal stripes
    image = 60 + 120 * stripes + rng.normal(0, 20, (SIZE, SIZE))
    return np.clip(image, 0, 255).astype(np.uint8), 8


def write_dicom(path: Path, patient: Patient, k: int, short_pixel_data: bool = False) -> dict[str, str]:
    """One CR file full of PHI; returns the UIDs it carries (identifiers that must not leave either)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    p = patient
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ref_last, ref_first = p.referrer
    ds.PatientName = f"{p.last}^{p.first}"
    ds.PatientID = p.mrn
    ds.OtherPatientIDs = f"OPID{p.mrn_digits}Z"
    # patient 1's archive wrote an ISO date into a DA element (non-conformant)
    ds.PatientBirthDate = f"{p.birth:%Y-%m-%d}" if p.index == 1 else f"{p.birth:%Y%m%d}"
    ds.AccessionNumber = p.accession
    ds.InstitutionAddress = ADDRESS.format(n=17 + p.index)
    ds.ReferringPhysicianName = f"{ref_last}^{ref_first}"
    ds.OperatorsName = STAFF[0]
    ds.PerformingPhysicianName = STAFF[1]
    ds.DeviceSerialNumber = f"DSN{p.index:02d}X{p.mrn_digits[-3:]}"
    ds.StudyID = f"STY{p.mrn_digits}"
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, keyword, f"{p.study:%Y%m%d}")
    ds.StudyTime = "093512"
    # names and dates burned into free text, as radiographers type them
    ds.StudyDescription = f"CHEST PA {p.study:%d.%m.%Y} {p.last}"
    ds.SeriesDescription = f"{p.first} {p.last} {p.study:%Y/%m/%d}"
    ds.ImageComments = (
        f"Seen by Dr {ref_last.title()} on {p.study:%Y-%m-%d} for {p.first.title()} {p.last.title()}, "
        f"MRN {p.mrn_digits}, born {p.birth:%d/%m/%Y}"
    )
    ds.PatientComments = f"{p.last} {p.first} dob {p.birth:%m/%d/%Y} acc {p.accession}"
    # what the scanner keeps
    ds.Manufacturer = p.manufacturer
    ds.ManufacturerModelName = f"{p.manufacturer.split()[0]}-X{1 + p.index % 2}"
    ds.InstitutionName = INSTITUTIONS[int(p.index % 3 == 0)]
    ds.StationName = f"CR{1 + p.index % 2}"
    ds.Modality = "CR"
    ds.KVP = str(110 + 10 * (p.index % 2))
    ds.PixelSpacing = [0.15, 0.15]
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.PatientSex = p.sex
    ds.PatientAge = f"{40 + p.index:03d}Y"
    array, bits = pixels(p, k)
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    data = array.tobytes()
    ds.PixelData = data[:64] if short_pixel_data else data  # present, not cut short: read fails later
    ds.save_as(path, enforce_file_format=True)
    return {"sop": str(ds.SOPInstanceUID), "study": str(ds.StudyInstanceUID),
            "series": str(ds.SeriesInstanceUID)}  # fmt: skip


@dataclass
class Cohort:
    folder: Path  # the DICOM folder (input, not searched)
    files: list[Path]
    broken: Path  # the file whose pixel data is too short
    needles: dict[str, str]  # what must not appear -> where it came from


def make_cohort(folder: Path) -> Cohort:
    needles: dict[str, str] = {}

    def needle(text: str, what: str) -> None:
        needles.setdefault(text, what)

    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deliberately non-conformant birth date
        for p in PATIENTS:
            (folder / p.folder).mkdir(parents=True)
            for k in range(IMAGES_PER_PATIENT):
                path = folder / p.folder / f"IMG{k + 1:04d}.dcm"
                uids = write_dicom(path, p, k)
                files.append(path)
                for kind, uid in uids.items():
                    needle(uid, f"{kind} UID of {p.folder}/{path.name}")
            tag = f"patient {p.index} ({p.folder})"
            needle(p.folder, f"folder name of {tag}")
            needle(p.last, f"PatientName (last) of {tag}")
            needle(p.first, f"PatientName (first) of {tag}")
            needle(p.mrn, f"PatientID of {tag}")
            needle(p.mrn_digits, f"PatientID digits of {tag}")
            needle(f"OPID{p.mrn_digits}Z", f"OtherPatientIDs of {tag}")
            needle(p.accession, f"AccessionNumber of {tag}")
            needle(ADDRESS.format(n=17 + p.index), f"InstitutionAddress of {tag}")
            needle(f"DSN{p.index:02d}X{p.mrn_digits[-3:]}", f"DeviceSerialNumber of {tag}")
            needle(f"STY{p.mrn_digits}", f"StudyID of {tag}")
            for text in date_forms(p.birth):
                needle(text, f"PatientBirthDate of {tag}")
            for text in date_forms(p.study):
                needle(text, f"StudyDate (also in free text) of {tag}")
        broken = folder / PATIENTS[0].folder / "IMG0003.dcm"
        write_dicom(broken, PATIENTS[0], 2, short_pixel_data=True)
        files.append(broken)
    for ref_last, ref_first in REFERRERS:
        needle(ref_last, "ReferringPhysicianName (last)")
        needle(ref_first, "ReferringPhysicianName (first)")
    for name in STAFF:
        for part in name.split("^"):
            needle(part, "OperatorsName / PerformingPhysicianName")
    needle("Quillfeather", "InstitutionAddress (street)")
    needle("Brackmoor", "InstitutionAddress (town)")
    for path in files:
        needle(path.name, "file name under a patient folder")
        needle(f"{path.parent.name}/{path.name}", "path under the cohort folder")
    return Cohort(folder=folder, files=files, broken=broken, needles=needles)


# ------------------------------------------------------------------------------------------- the search

_DIGITS = re.compile(r"^[0-9]+$")
_DATA_URI = re.compile(rb"data:[a-z]+/[a-z0-9.+-]+;base64,([A-Za-z0-9+/=]{16,})")


def _grams(data: bytes) -> np.ndarray:
    """The sorted distinct 4-byte windows of `data` (as uint32)."""
    a = np.frombuffer(data, dtype=np.uint8).astype(np.uint32)
    if len(a) < 4:
        return np.empty(0, dtype=np.uint32)
    return np.unique(a[:-3] | (a[1:-2] << 8) | (a[2:-1] << 16) | (a[3:] << 24))


class Needles:
    """Case-insensitive search for many strings in UTF-8 and UTF-16 (LE / BE) bytes.

    Hundreds of needles in MB-sized files: a needle is looked for only where every 4-byte window of it occurs
    somewhere in the data (one vectorised test for all of them), then exactly.
    """

    def __init__(self, by_text: dict[str, str]) -> None:
        self.by_text = by_text
        self._forms: list[tuple[str, bytes, re.Pattern[bytes] | None]] = []
        for text in by_text:
            low = text.lower()
            for i, encoding in enumerate(("utf-8", "utf-16-le", "utf-16-be")):
                form = low.encode(encoding)
                # a bare number (MRN digits, a DA date) only counts standing alone: '0.19370412' in a CSV of
                # losses is not a birth date
                bare = i == 0 and _DIGITS.match(text) is not None
                pattern = re.compile(rb"(?<![0-9.])" + re.escape(form) + rb"(?![0-9])") if bare else None
                self._forms.append((text, form, pattern))
        grams = [_grams(form) for _, form, _ in self._forms]
        self._grams = np.concatenate(grams)
        self._starts = np.cumsum([0] + [len(g) for g in grams[:-1]])

    def find(self, data: bytes) -> list[str]:
        low = data.lower()
        present = _grams(low)
        if not len(present):
            return []
        at = np.minimum(np.searchsorted(present, self._grams), len(present) - 1)
        candidate = np.logical_and.reduceat(present[at] == self._grams, self._starts)
        hits = set()
        for (text, form, pattern), maybe in zip(self._forms, candidate, strict=True):
            if maybe and text not in hits and (pattern.search(low) if pattern else form in low):
                hits.add(text)
        return sorted(hits)


def png_text(data: bytes) -> bytes:
    """The text chunks of a PNG (tEXt, zTXt, iTXt), decompressed."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt":
            out.append(body)
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out.append(key + b"\0" + zlib.decompress(rest[1:]))
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed = rest[:1] == b"\1"
            text = rest[2:].split(b"\0", 2)[-1]
            out.append(key + b"\0" + (zlib.decompress(text) if compressed else text))
        pos += 12 + length
    return b"\n".join(out)


def h5_strings(source: Path | io.BytesIO) -> bytes:
    """Every name, string dataset and attribute of an HDF5 file, decoded (compressed chunks included)."""
    parts: list[str] = []

    def attrs(obj: h5py.HLObject) -> None:
        for key, value in obj.attrs.items():
            parts.append(f"{obj.name}@{key}={value!r}")
            if isinstance(value, (bytes, np.bytes_)):
                parts.append(bytes(value).decode("utf-8", "replace"))
            elif isinstance(value, str):
                parts.append(value)
            elif isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
                parts.extend(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                             for v in value.ravel())  # fmt: skip

    def visit(name: str, obj: h5py.HLObject) -> None:
        parts.append(name)
        attrs(obj)
        if isinstance(obj, h5py.Dataset) and (obj.dtype.kind in "OSU" or h5py.check_string_dtype(obj.dtype)):
            values = obj[()]
            for v in np.asarray(values, dtype=object).ravel():
                parts.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))

    with h5py.File(source, "r", locking=False) as f:
        attrs(f)
        f.visititems(visit)
    return "\n".join(parts).encode("utf-8")


def _zip_members(data: bytes) -> list[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [(member, archive.read(member)) for member in archive.namelist()]
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def views(name: str, data: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """The bytes as stored, plus every decoded layer a string could hide in."""
    yield name, data
    if depth > 2:
        return
    # a layer that does not decode is still searched as raw bytes above
    if data[:4] == b"PK\x03\x04":
        for member, content in _zip_members(data):
            yield from views(f"{name}!{member}", content, depth + 1)
    if data[:2] == b"\x1f\x8b":
        unzipped = b""
        with contextlib.suppress(OSError, EOFError, zlib.error):
            unzipped = gzip.decompress(data)
        yield from views(f"{name}!gunzip", unzipped, depth + 1)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        text = b""
        with contextlib.suppress(zlib.error):
            text = png_text(data)
        yield f"{name}!png-text", text
    if any(data[offset : offset + 8] == b"\x89HDF\r\n\x1a\n" for offset in (0, 512, 1024, 2048, 4096)):
        yield f"{name}!hdf5-strings", h5_strings(io.BytesIO(data))
    for i, match in enumerate(_DATA_URI.finditer(data)):
        try:
            decoded = base64.b64decode(match.group(1))
        except (binascii.Error, ValueError):
            continue
        yield from views(f"{name}!data-uri[{i}]", decoded, depth + 1)


def leaks(where: str, data: bytes, needles: Needles, allowed: list[str] = ()) -> list[str]:
    """'where: what (string)' for each needle found in any view of `data`, after cutting `allowed` out."""
    for text in sorted(allowed, key=len, reverse=True):
        data = data.replace(text.encode("utf-8"), b"<allowed path>")
    found = []
    for name, blob in views(where, data):
        found += [f"{name}: {needles.by_text[t]} ({t!r})" for t in needles.find(blob)]
    return found


# ----------------------------------------------------------------------------------------------- the flow

VAE = [
    "data.preprocess.size=32", "optim.batch_size=16", "optim.total_samples=32", "optim.eval_every_samples=32",
    "optim.checkpoint_every_samples=32", "optim.log_every_samples=16", "optim.warmup_samples=0",
    "eval.images=4", "eval.max_val_samples=16", "vae.latent_dim=8", "vae.base_channels=8",
    "vae.max_channels=16",
]  # fmt: skip
DAE = [
    "data.preprocess.size=32", "optim.batch_size=16", "optim.total_samples=16", "optim.eval_every_samples=16",
    "optim.checkpoint_every_samples=16", "optim.log_every_samples=16", "optim.warmup_samples=0",
    "eval.images=2", "eval.max_val_samples=4", "eval.latent_stats_samples=16", "dae.latent_dim=8",
    "dae.unet_channels=[8,16]", "dae.ddim_steps=2",
]  # fmt: skip
PAGES = ["map", "neighbours", "compare", "clusters", "counterfactual", "probes", "fairness", "controls"]


@dataclass
class Command:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Flow:
    root: Path
    cohort: Cohort
    needles: Needles
    commands: list[Command] = field(default_factory=list)
    served: list[tuple[str, bytes]] = field(default_factory=list)  # (what, bytes) from the server
    served_pages: list[str] = field(default_factory=list)
    rendered: list[tuple[str, bytes]] = field(default_factory=list)  # (what, bytes) from AppTest
    page_errors: list[str] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)

    @property
    def store(self) -> Path:
        return self.root / "store.h5"

    def manifest_paths(self) -> list[str]:
        """The image paths as the manifest writes them (relative to its folder)."""
        return [str(p.relative_to(self.root)) for p in self.cohort.files]

    def terminal_paths(self) -> list[str]:
        """Every way a command may print an input file's path on the terminal."""
        forms = set(self.manifest_paths())
        for p in self.cohort.files:
            forms |= {str(p), str(p.resolve()), str(p.resolve().relative_to(self.root.resolve()))}
        return sorted(forms)


def _env(root: Path) -> dict[str, str]:
    home, tmp = root / "home", root / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.pop("EMBEDX_SALT", None)  # the scan writes its salt file, which is searched too
    env.update(
        EMBEDX_NO_PROGRESS="1",
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
        HOME=str(home),  # caches and configs the commands write land where they are searched
        MPLCONFIGDIR=str(home / ".matplotlib"),
        XDG_CACHE_HOME=str(home / ".cache"),
        TMPDIR=str(tmp),
        COLUMNS="400",  # rich wraps at the terminal width: a wrapped name would evade the search
        PYTHONWARNINGS="default",  # warnings quote values: show every one
    )
    return env


def _start(args: list[str], root: Path) -> tuple[list[str], subprocess.Popen, float]:
    argv = [sys.executable, "-m", "embedx", "-v", *args]
    process = subprocess.Popen(argv, cwd=root, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, encoding="utf-8", errors="replace")  # fmt: skip
    return argv, process, time.monotonic()


def _finish(started: tuple[list[str], subprocess.Popen, float], flow: Flow) -> Command:
    argv, process, t0 = started
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    command = Command(argv, process.returncode, stdout, stderr, time.monotonic() - t0)
    flow.commands.append(command)
    if command.returncode != 0:
        pytest.fail(f"`embedx {shlex.join(argv[4:])}` exited {command.returncode}:\n{stdout[-3000:]}\n"
                    f"{stderr[-3000:]}")  # fmt: skip
    return command


def embedx(flow: Flow, *args: str) -> Command:
    return _finish(_start(list(args), flow.root), flow)


# After training, as a user types them (from the folder holding dicom/ and manifest.csv). The report adds
# what is not run here (cross-site matrix per model, clusters of the dae, distribution tests).
ENCODE = [
    "encode runs/vae --manifest manifest.csv --out store.h5 --name vae",
    "encode runs/dae --manifest manifest.csv --out store.h5 --name dae",
]
SHIFT = (  # reads the manifest and images only: runs beside the analyses of the store
    "experiment shift --manifest manifest.csv --by manufacturer --target sex --out shift --size 32 "
    "--replicates 1 --epochs 1 --batch-size 16"
)
ANALYSES = [
    "project store.h5 --method pca",
    "probe store.h5 --json probes.json --permutations 50 --bootstrap 50",
    "fairness store.h5 --target sex --sensitive age,institution --json fairness.json --bootstrap 30 "
    "--permutations 30 --folds 3 --min-group-n 4 --min-group-class 2",
    "calibrate store.h5 --null 10 --planted 5 --null-permutations 19 --json calibration.json "
    "--figure power.png",
    "control background --manifest manifest.csv --attribute manufacturer --store store.h5 "
    "--json background.json --size 32 --patch 8 --permutations 50 --bootstrap 50",
    "report store.h5 --out report --target sex --permutations 50",
    "store info store.h5",
]


def run_cli_flow(flow: Flow) -> None:
    embedx(flow, *shlex.split("data scan dicom --out manifest.csv"))
    started = []
    try:
        # the two models train side by side (one thread each), the manifest is checked meanwhile
        for kind, sets in (("vae", VAE), ("dae", DAE)):
            options = [a for o in sets for a in ("--set", o)]
            argv = ["train", kind, "--manifest", "manifest.csv", *options, "--out", f"runs/{kind}"]
            started.append(_start(argv, flow.root))
        embedx(flow, *shlex.split("data check manifest.csv"))
        for training in started:
            _finish(training, flow)
        for line in ENCODE:
            embedx(flow, *shlex.split(line))
        started.append(shift := _start(shlex.split(SHIFT), flow.root))
        for line in ANALYSES:
            if line.startswith("report"):
                _finish(shift, flow)
            embedx(flow, *shlex.split(line))
    finally:  # a failed step leaves no command of ours running
        for _, process, _ in started:
            if process.poll() is None:
                process.kill()
                process.communicate()


# ------------------------------------------------------------------------------------- the dashboard, served

_MEDIA = re.compile(rb"/media/[0-9a-f]{8,}\.(?:csv|png|jpe?g|webp|gif|svg|json|txt|html)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()
    except urllib.error.HTTPError as err:  # a 4xx page is served too: search it
        return err.read()


def _messages(raw: list[bytes]) -> Iterator[object]:
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    for blob in raw:
        message = ForwardMsg()
        message.ParseFromString(blob)
        yield message


def _elements(raw: list[bytes]) -> Iterator[object]:
    for message in _messages(raw):
        if message.WhichOneof("type") == "delta" and message.delta.WhichOneof("type") == "new_element":
            yield message.delta.new_element


def _run_page(ws: object, page_hash: str = "", widgets: tuple[tuple[str, str], ...] = ()) -> list[bytes]:
    """One script run over the websocket, as the browser asks for it: the raw ForwardMsgs until it ends."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    back = BackMsg()
    back.rerun_script.SetInParent()
    back.rerun_script.page_script_hash = page_hash
    for widget_id, value in widgets:
        state = back.rerun_script.widget_states.widgets.add()
        state.id = widget_id
        state.json_value = value  # the map is a v2 component: its state travels as JSON
    ws.send(back.SerializeToString())  # type: ignore[attr-defined]
    messages = []
    while True:
        messages.append(ws.recv(timeout=120))  # type: ignore[attr-defined]
        if next(_messages(messages[-1:])).WhichOneof("type") == "script_finished":
            return messages


def _click_downloads(flow: Flow, ws: object, raw: list[bytes]) -> None:
    """Ask for every download made on click (the selection's CSV), as the browser does when one is pressed,
    so its file is served and searched like every other."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    deferred = [e.download_button.deferred_file_id for e in _elements(raw)
                if e.WhichOneof("type") == "download_button" and e.download_button.deferred_file_id]
    assert deferred, "the selection panel offers no CSV download"
    session = next(m.new_session.initialize.session_id for m in _messages(raw)
                   if m.WhichOneof("type") == "new_session")
    for number, file_id in enumerate(deferred):
        back = BackMsg()
        back.backend_operation_request.request_id = f"download-{number}"
        back.backend_operation_request.session_id = session
        back.backend_operation_request.deferred_file.file_id = file_id
        ws.send(back.SerializeToString())  # type: ignore[attr-defined]
        while True:
            (message,) = _messages([ws.recv(timeout=120)])  # type: ignore[attr-defined]
            if message.WhichOneof("type") == "backend_operation_response":
                break
        response = message.backend_operation_response
        assert not response.error_msg, response.error_msg
        flow.served.append((f"download {file_id}", response.deferred_file.url.encode()))  # /media/<id>.csv


def _serve(flow: Flow, what: str, raw: list[bytes]) -> None:
    flow.served.append((what, b"".join(raw)))
    flow.page_errors += [f"{what}: {e.exception.message}" for e in _elements(raw)
                         if e.WhichOneof("type") == "exception"]  # fmt: skip


def _lasso(rows: range) -> str:
    """A map selection in the shape the map's browser code sends: the points' customdata (their row ids)."""
    points = [{"customdata": row} for row in rows]
    return json.dumps({"selection": {"points": points, "box": [], "lasso": [], "serial": "flow-1"}})


def fetch_pages(flow: Flow, port: int) -> None:
    """Plain HTTP routes, then every page over the websocket (the map again with a lasso), then /media."""
    from websockets.sync.client import connect

    base = f"http://127.0.0.1:{port}"
    for route in ("/", "/_stcore/health", "/_stcore/host-config", "/_stcore/agent/openapi.json"):
        flow.served.append((f"GET {route}", _get(base + route)))
    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"], max_size=None) as ws:
        first = _run_page(ws)
        _serve(flow, "websocket: first run", first)
        navigation = next(m.navigation for m in _messages(first) if m.WhichOneof("type") == "navigation")
        for page in navigation.app_pages:
            flow.served.append((f"GET /{page.url_pathname}", _get(f"{base}/{page.url_pathname}")))
            raw = _run_page(ws, page.page_script_hash)
            _serve(flow, f"websocket: page {page.page_name!r}", raw)
            flow.served_pages.append(page.page_name)
            charts = [e.bidi_component.id for e in _elements(raw) if e.WhichOneof("type") == "bidi_component"]
            maps = [c for c in charts if c.endswith("map_chart")]
            if maps:  # the selection panel: thumbnails, composition, rows table, CSV download
                raw = _run_page(ws, page.page_script_hash, ((maps[0], _lasso(range(0, 48, 3))),))
                _serve(flow, f"websocket: page {page.page_name!r} with a lasso selection", raw)
                flow.served_pages.append(f"{page.page_name} (lasso)")
                assert any(b"Selection: 16 images" in blob for blob in raw), "the lasso selected nothing"
                _click_downloads(flow, ws, raw)
    media = sorted({m.decode() for _, blob in flow.served for m in _MEDIA.findall(blob)})
    for url in media:
        flow.served.append((f"GET {url}", _get(base + url)))
    flow.counts["media files fetched"] = len(media)
    flow.counts["csv files fetched"] = sum(url.endswith(".csv") for url in media)


def serve_dashboard(flow: Flow, meanwhile: Callable[[Flow], None]) -> None:
    """`embedx dashboard` on a free loopback port (`meanwhile` runs while it starts), fetched, then stopped by
    its PID, also on failure."""
    port = _free_port()
    log_path = flow.root / "dashboard.log"
    argv = [sys.executable, "-m", "embedx", "dashboard", str(flow.store), "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, cwd=flow.root, env=_env(flow.root), stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        try:
            meanwhile(flow)
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    pytest.fail(f"dashboard exited early: {log_path.read_text()}")
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    pytest.fail("dashboard did not open its port within 60 s")
                time.sleep(0.2)
            fetch_pages(flow, port)
        finally:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


# ----------------------------------------------------------------------------------- the dashboard, AppTest


def _tree(node: object) -> Iterator[object]:
    yield node
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from _tree(child)


def _rendered(at: object) -> bytes:
    """Every element and block of a finished AppTest run: its protobuf, and dataframes as CSV."""
    import pandas as pd

    parts = []
    for node in _tree(at._tree):  # type: ignore[attr-defined]
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "SerializeToString"):
            parts.append(proto.SerializeToString())
        if type(node).__name__ == "Dataframe":
            value = node.value  # type: ignore[attr-defined]
            if isinstance(value, pd.DataFrame):
                parts.append(value.to_csv().encode("utf-8"))
        for attr in ("value", "label", "body", "options"):
            with contextlib.suppress(Exception):
                parts.append(str(getattr(node, attr)).encode("utf-8"))
    return b"\n".join(parts)


def render_pages(flow: Flow) -> None:
    """Every page under AppTest on the store, with the interactions a user makes."""
    from streamlit.testing.v1 import AppTest

    import embedx.dashboard
    from embedx.dashboard.data import STORE_ENV

    views_dir = Path(embedx.dashboard.__file__).resolve().parent / "views"

    def run(name: str, script: Path, **state: object) -> object:
        at = AppTest.from_file(str(script), default_timeout=120)
        for key, value in state.items():
            at.session_state[key] = value
        at.run()
        record(name, at)
        return at

    def record(name: str, at: object) -> None:
        flow.page_errors += [f"AppTest {name}: {e.value}" for e in at.exception]  # type: ignore[attr-defined]
        flow.rendered.append((f"AppTest {name}", _rendered(at)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(STORE_ENV, str(flow.store))
        run("app.py", views_dir.parent / "app.py")
        for page in PAGES:
            if page not in ("clusters", "counterfactual"):  # run below, with a button pressed / a selection
                run(page, views_dir / f"{page}.py")
        run("map (selection)", views_dir / "map.py", selection=np.arange(0, 48, 3))
        run("map (one point)", views_dir / "map.py", selection=np.array([4]))
        run("neighbours (row 5)", views_dir / "neighbours.py", focus_row=5)
        at = run("clusters", views_dir / "clusters.py")
        at.button(key="cl_select").click().run()  # type: ignore[attr-defined]
        record("clusters (cluster made the selection)", at)
        # the counterfactual page with its direction fitted (decoding is left out: pixels only, and importing
        # diffusers alone costs seconds)
        run("counterfactual (selection)", views_dir / "counterfactual.py", selection=np.arange(4))


# ------------------------------------------------------------------------------------------------ fixture


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Flow:
    root = tmp_path_factory.mktemp("privacy-flow")
    cohort = make_cohort(root / "dicom")
    flow = Flow(root=root, cohort=cohort, needles=Needles(cohort.needles))
    t0 = time.monotonic()
    run_cli_flow(flow)
    t1 = time.monotonic()
    serve_dashboard(flow, meanwhile=render_pages)  # AppTest runs while the server starts
    flow.counts["seconds cli"] = round(t1 - t0, 1)
    flow.counts["seconds dashboard"] = round(time.monotonic() - t1, 1)
    return flow


def written_files(flow: Flow) -> list[Path]:
    dicom = flow.cohort.folder.resolve()
    return sorted(p for p in flow.root.rglob("*") if p.is_file() and not p.resolve().is_relative_to(dicom))


def _report(found: list[str], what: str) -> str:
    shown = "\n  ".join(found[:80])
    more = f"\n  ... and {len(found) - 80} more" if len(found) > 80 else ""
    return f"PHI found in {what}:\n  {shown}{more}"


# --------------------------------------------------------------------------------------------------- tests


def test_the_search_finds_phi_where_it_is(flow: Flow, tmp_path: Path) -> None:
    """The needles are in the input, and the search sees through every layer it claims to (no vacuous pass)"""
    needles = flow.needles
    for path in flow.cohort.files:
        p = PATIENTS[LAST.index(path.parent.name.split("^")[0])]
        found = set(needles.find(path.read_bytes()))
        assert {p.last, p.first, p.mrn, p.accession, ADDRESS.format(n=17 + p.index), "Quillfeather"} <= found
        assert f"{p.study:%Y%m%d}" in found and f"{p.study:%d.%m.%Y}" in found  # DA and free text
        assert f"{p.birth:%d/%m/%Y}" in found
    manifest = (flow.root / "manifest.csv").read_bytes()
    assert any("folder name" in hit for hit in leaks("manifest.csv", manifest, needles))
    assert not leaks("manifest.csv", manifest, needles, allowed=flow.manifest_paths())
    # layers: a gzip-compressed HDF5 string, an attribute, UTF-16, a PNG text chunk, a data URI
    secret = PATIENTS[3]
    with h5py.File(tmp_path / "probe.h5", "w") as f:
        f.create_dataset("s", data=np.array([f"x {secret.last} y"], dtype=object), dtype=h5py.string_dtype(),
                         compression="gzip")  # fmt: skip
        f.attrs["note"] = secret.accession
    found = "\n".join(leaks("probe.h5", (tmp_path / "probe.h5").read_bytes(), needles))
    assert secret.last in found and secret.accession in found
    assert leaks("utf16", f"..{secret.first.title()}..".encode("utf-16-le"), needles)
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("Comment", f"{secret.mrn}", zip=True)
    png = io.BytesIO()
    Image.new("L", (4, 4)).save(png, format="PNG", pnginfo=info)
    assert leaks("png", png.getvalue(), needles)
    uri = b"<img src='data:image/png;base64," + base64.b64encode(png.getvalue()) + b"'>"
    assert leaks("html", uri, needles)
    # a DA date counts standing alone, not inside a longer number
    birth = f"{secret.birth:%Y%m%d}"
    assert leaks("csv", f"a,{birth},b".encode(), needles)
    assert not leaks("csv", f"0.{birth}5,1{birth}".encode(), needles)


def test_the_flow_ran_on_the_phi_cohort(flow: Flow) -> None:
    """Not a vacuous pass: every command read the cohort, the broken file went down the failure paths."""
    import pandas as pd

    from embedx.store.h5store import Store

    manifest = pd.read_csv(flow.root / "manifest.csv")
    assert len(manifest) == len(flow.cohort.files) == N_PATIENTS * IMAGES_PER_PATIENT + 1
    assert set(manifest.columns) == {
        "path", "subject_id", "manufacturer", "manufacturer_model", "institution", "station", "modality",
        "kvp", "pixel_spacing", "view_position", "body_part", "sex", "age",
    }  # fmt: skip
    assert manifest["subject_id"].nunique() == N_PATIENTS
    assert manifest["subject_id"].str.fullmatch(r"subj-[0-9a-f]{16}").all()
    assert set(manifest["manufacturer"]) == set(MANUFACTURERS)
    scan = flow.commands[0]
    assert "contain their patient's ID or name" in " ".join((scan.stdout + scan.stderr).split())
    with Store.open(flow.store) as store:
        assert store.n == len(manifest)
        for model in ("vae", "dae"):
            failed = store.failed(model)
            assert len(failed) == 1 and failed["reason"].iloc[0].startswith("<file>: "), failed
    shift = json.loads((flow.root / "shift" / "shift.json").read_text(encoding="utf-8"))
    assert [f["reason"][:8] for f in shift["failed"]] == ["<file>: "]
    report = flow.root / "report"
    assert (report / "report.html").is_file() and len(list((report / "figures").glob("*.png"))) >= 5
    assert not flow.page_errors, flow.page_errors
    rendered = dict(flow.rendered)
    assert b"balanced accuracy" in rendered["AppTest counterfactual (selection)"]  # the direction was fitted
    assert b"Selection: 16 images" in rendered["AppTest map (selection)"]
    assert {p for p in flow.served_pages if "(" not in p} == {
        "Map", "Neighbours", "Compare models", "Clusters", "Counterfactuals", "Probes", "Fairness", "Controls"
    }  # fmt: skip
    assert flow.counts["csv files fetched"] >= 1  # the selection's CSV download, made on click


def test_no_written_file_holds_phi(flow: Flow) -> None:
    """Every file the flow wrote: manifest, sidecar, salt, runs, JSON, figures, store, report, caches, logs"""
    files = written_files(flow)
    assert len(files) > 40, files
    found: list[str] = []
    for path in files:
        # the manifest's path column and a run's skipped.csv list image paths by design (documented): the
        # exact paths are cut out there, so a name anywhere else in them still fails
        listing = path == flow.root / "manifest.csv" or path.name == "skipped.csv"
        allowed = flow.terminal_paths() if listing else []
        found += leaks(str(path.relative_to(flow.root)), path.read_bytes(), flow.needles, allowed)
    assert not found, _report(found, f"{len(files)} written files")


def test_no_command_prints_phi(flow: Flow) -> None:
    """stdout / stderr of every command (-v, all warnings shown): only a path it could not read may appear."""
    allowed = flow.terminal_paths()
    found: list[str] = []
    for command in flow.commands:
        name = "embedx " + shlex.join(command.argv[4:])
        for stream, text in (("stdout", command.stdout), ("stderr", command.stderr)):
            found += leaks(f"{name} [{stream}]", text.encode("utf-8"), flow.needles, allowed)
    log = flow.root / "dashboard.log"
    found += leaks("embedx dashboard [stdout+stderr]", log.read_bytes(), flow.needles)
    assert not found, _report(found, "terminal output")


def test_no_page_served_by_the_dashboard_holds_phi(flow: Flow) -> None:
    assert len(flow.served) > 2 * len(PAGES)
    found = [hit for what, data in flow.served for hit in leaks(what, data, flow.needles)]
    assert not found, _report(found, "what the dashboard server sent")


def test_no_page_rendered_under_apptest_holds_phi(flow: Flow) -> None:
    assert len(flow.rendered) >= len(PAGES) + 1
    found = [hit for what, data in flow.rendered for hit in leaks(what, data, flow.needles)]
    assert not found, _report(found, "rendered dashboard pages")


def test_a_guessed_patient_folder_cannot_be_confirmed_from_the_ids(flow: Flow) -> None:
    """Sample ids reach reports and CSVs; hashed unsalted, a guessed folder convention would confirm that a
    named patient is in the cohort. They are salted per store, and the salt stays in the store."""
    import hashlib

    from embedx.data.identity import sample_id

    guess = f"dicom/{PATIENTS[5].folder}/IMG0001.dcm"  # name + MRN in a common archive layout
    with h5py.File(flow.store, "r", locking=False) as store:
        ids = set(store["samples/id"].asstr()[()])
        salt = str(store.attrs["sample_salt"])
    assert hashlib.sha1(guess.encode()).hexdigest()[:16] not in ids
    assert len(salt) == 32 and sample_id(guess, None, "", salt) in ids  # the store itself can still join
    for name in ("report/report.json", "report/report.html"):
        assert salt not in (flow.root / name).read_text(encoding="utf-8"), name
