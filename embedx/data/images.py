"""Read one image file (PNG/JPEG/TIFF, DICOM, NIfTI) into a float32 array in its native units.

Native units matter: a 16-bit radiograph keeps its 65,536 grey levels, a CT keeps Hounsfield units (after
the DICOM modality LUT), so that windowing and intensity scaling in `preprocess` act on real values.
Every failure becomes `ImageReadError(path, reason)`, so the dataset can skip and list a bad file instead of
stopping a run over one image in ten thousand. A reason is a fixed phrase plus the exception's type, never
the library's message: pydicom's, nibabel's and Pillow's messages may quote header values or the file name,
and a reason (path scrubbed) is kept in the store, where DESIGN allows no PHI.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedx.errors import ImageReadError

log = logging.getLogger(__name__)

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# A DICOM modality code (CT, MR, CR, DX, SR, ...): shown in reasons; anything else in that field is not.
_MODALITY_CODE = re.compile(r"[A-Z]{2,8}")

# ITU-R BT.601 luma, the weights DICOM and Pillow use for colour -> grey.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Which packages decode which compressed transfer syntaxes, for the error message when none is installed.
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": "Pillow (with libjpeg), pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pylibjpeg + pylibjpeg-libjpeg, pyjpegls, or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pylibjpeg + pylibjpeg-libjpeg, pyjpegls, or python-gdcm",
    "1.2.840.10008.1.2.4.90": "Pillow (with OpenJPEG), pylibjpeg + pylibjpeg-openjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.91": "Pillow (with OpenJPEG), pylibjpeg + pylibjpeg-openjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
}


@dataclass(frozen=True)
class NiftiSelection:
    """Which axial slices of a volume become the image.

    - `center`: the middle slice -> (H, W).
    - `center_stack`: `slices` consecutive slices around the middle -> (slices, H, W) (seed 001).
    - `random_triplet`: 3 distinct random slices, in anatomical order, as channels -> (3, H, W)
      (seed 000); deterministic for a given `rng` state.
    """

    mode: Literal["center", "center_stack", "random_triplet"] = "center"
    slices: int = 1


def image_kind(path: Path) -> str:
    """'nifti' | 'pil' | 'dicom': the reader `read_image` uses (by name, then the DICM marker); `data check`
    asks the same question, so a file is checked by the reader that will read it."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PIL_SUFFIXES):
        return "pil"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    # DICOM files often have no suffix at all (IM000001, 4648); sniff the preamble.
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as err:
        raise ImageReadError(str(path), f"cannot open: {err.strerror or err}") from err
    if head[128:132] == b"DICM":
        return "dicom"
    return "pil"


def _to_grey(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) colour -> (H, W) luma; alpha is dropped (it is not image content)."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3].astype(np.float32) @ _LUMA
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        return arr[..., 0].astype(np.float32)
    return arr.astype(np.float32)


def _clip_window(arr: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    centre, width = float(window[0]), float(window[1])
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return np.clip(arr, centre - width / 2, centre + width / 2)


def read_pil(path: Path, window: tuple[float, float] | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated or corrupt file fails here, not later in a worker
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode == "1":
                img = img.convert("L")
            elif mode == "CMYK":
                img = img.convert("RGB")
            arr = np.array(img)
    except FileNotFoundError as err:
        raise ImageReadError(str(path), "file does not exist") from err
    except UnidentifiedImageError as err:
        raise ImageReadError(str(path), "not a readable image (unknown or corrupt format)") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # Pillow's messages are kept out too, as every reader's: a reason may end up in a shared store
        raise ImageReadError(str(path), f"corrupt or truncated image ({type(err).__name__})") from err
    if mode.startswith("I;16") and arr.dtype != np.uint16:
        arr = arr.astype(np.uint16)
    out = _to_grey(arr)
    if window is not None:
        out = _clip_window(out, window)
    return out


def _dicom_rescale(ds: Any, frame: int) -> tuple[float, float] | None:
    """Slope/intercept from the top level, else from the enhanced multi-frame functional groups."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    for item in _functional_group_items(ds, frame, "PixelValueTransformationSequence"):
        return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)
    return None


def _functional_group_items(ds: Any, frame: int, macro: str) -> list[Any]:
    """First item of `macro` in the frame's per-frame group, then in the shared group (enhanced DICOM)."""
    items = []
    groups = (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0))
    for seq_name, index in groups:
        seq = ds.get(seq_name)
        if seq is not None and len(seq) > index and seq[index].get(macro):
            items.append(seq[index].get(macro)[0])
    return items


def _first_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _dicom_window(ds: Any, frame: int) -> tuple[float, float] | None:
    """The first VOI window in the header (top level or enhanced functional groups), if any."""
    centre, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if centre is not None and width is not None and width > 0:
        return centre, width
    for item in _functional_group_items(ds, frame, "FrameVOILUTSequence"):
        c, w = _first_number(item.get("WindowCenter")), _first_number(item.get("WindowWidth"))
        if c is not None and w is not None and w > 0:
            return c, w
    return None


_DAMAGED_LENGTH = (
    "damaged DICOM header: a data element's length runs past the end of the file (a corrupt length or "
    "VR, or a file cut short), so no pixel data could be read"
)
_DAMAGED_EMPTY = (
    "damaged DICOM header: no data element could be read after the file meta information (a corrupt "
    "header or a file cut short), so no pixel data could be read"
)


def damaged_header_reason(ds: Any) -> str | None:
    """A fixed reason when a parsed DICOM header is damaged, else None.

    pydicom reads a damaged header without raising: a length field that is too large (or a garbage VR that
    makes the next bytes a length) swallows the rest of the file as one value, so the pixel data simply
    seem absent. Public because `embedx data scan` (`dicom_header.read_header`, which reads without the
    pixel data) must give the same reason as training and encode, not "no pixel data". The reasons are
    fixed texts: element values may hold PHI (a name typed into a coded field), so none is quoted.
    """
    from pydicom.dataelem import RawDataElement

    if len(ds) == 0:  # pydicom drops the whole dataset when it hits the end of file inside a sequence
        return _DAMAGED_EMPTY
    for tag in list(ds.keys()):  # tags: iterating the dataset itself would decode every element
        raw = ds.get_item(tag)  # the raw element: its value is not decoded (no warnings quoting values)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != 0xFFFFFFFF
            and isinstance(raw.value, bytes)
            and len(raw.value) < raw.length
        ):
            return _DAMAGED_LENGTH
    return None


def no_pixels_reason(ds: Any) -> str:
    """Why a parsed DICOM has no pixel-data element: a damaged header, a cut image, or a non-image object.

    Telling these apart sends the user to the right problem. Only a well-formed modality code is shown,
    never another header value (see `damaged_header_reason`).
    """
    from pydicom.uid import UID

    damaged = damaged_header_reason(ds)
    if damaged is not None:
        return damaged
    modality = str(ds.get("Modality", ""))
    shown = modality if _MODALITY_CODE.fullmatch(modality) else "not a modality code"
    sop_classes = [ds.get("SOPClassUID"), getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")]
    image_class = any(uid and "Image Storage" in UID(str(uid)).name for uid in sop_classes)
    if image_class or "Rows" in ds or "Columns" in ds:
        return (
            f"DICOM file has no pixel data although its header describes an image (Modality {shown}): "
            "the file was cut short before its pixel data, or they were stripped"
        )
    return f"DICOM file has no pixel data (Modality {shown}; not an image object)"


def read_dicom(
    path: Path, window: tuple[float, float] | None = None, header_window: bool = True
) -> np.ndarray:
    """DICOM -> (H, W) float32 in modality units (e.g. HU), windowed, MONOCHROME1 turned to MONOCHROME2.

    Order follows the DICOM grayscale pipeline: modality LUT (slope/intercept), VOI window (the argument,
    else the header's first window when `header_window`), then polarity. Multi-frame: the middle frame.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as err:
        raise ImageReadError(str(path), "file does not exist") from err
    except InvalidDicomError as err:
        # Old files may lack the 128-byte preamble and file meta; read them as a bare dataset.
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:
            ds = None
        if ds is None or "Rows" not in ds:
            raise ImageReadError(
                str(path), "not a DICOM file (no 'DICM' marker and no image header)"
            ) from err
        if "TransferSyntaxUID" not in ds.file_meta:
            from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

            by_encoding = {(False, True): ExplicitVRLittleEndian, (False, False): ExplicitVRBigEndian}
            encoding = tuple(ds.original_encoding)  # (implicit VR, little endian) as read
            ds.file_meta.TransferSyntaxUID = by_encoding.get(encoding, ImplicitVRLittleEndian)
    except Exception as err:  # pydicom raises many types on damaged headers; their messages may quote values
        raise ImageReadError(str(path), f"corrupt DICOM header ({type(err).__name__})") from err

    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(str(path), no_pixels_reason(ds))

    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:
        uid = str(tsyntax) if tsyntax is not None else "unknown"
        name = getattr(tsyntax, "name", uid)
        message = str(err)
        # "Pillow does not support 'JPEG Extended' for samples with 12-bit precision": the installed decoder
        # cannot do this variant, which is a missing decoder, not damaged data
        unsupported = "does not support" in message or "not supported" in message
        if isinstance(err, NotImplementedError) or "missing dependencies" in message or unsupported:
            hint = _DECODER_HINTS.get(uid, "a pydicom pixel-data plugin (pylibjpeg or python-gdcm)")
            reason = f"unsupported transfer syntax {name} ({uid}): install {hint} to decode it"
        else:  # a decoder is installed but failed on this file's data (its message may quote header values)
            reason = f"corrupt {name} pixel data ({type(err).__name__})"
        raise ImageReadError(str(path), reason) from err
    except Exception as err:  # truncated pixel data, bad group 0028 values (messages quote the values)
        raise ImageReadError(str(path), f"corrupt or truncated pixel data ({type(err).__name__})") from err

    n_frames = int(_first_number(ds.get("NumberOfFrames")) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frame = 0
    if n_frames > 1 and pixels.ndim >= (4 if samples > 1 else 3):
        frame = n_frames // 2
        pixels = pixels[frame]

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        # pydicom already converted YBR to RGB; colour images have no modality LUT or polarity.
        out = _to_grey(pixels)
        return _clip_window(out, window) if window is not None else out

    out = pixels.astype(np.float32)
    rescale = _dicom_rescale(ds, frame)
    if rescale is not None:
        slope, intercept = rescale
        out = out * np.float32(slope) + np.float32(intercept)
    elif "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        out = apply_modality_lut(pixels, ds).astype(np.float32)

    use_window = window if window is not None else (_dicom_window(ds, frame) if header_window else None)
    if use_window is not None:
        out = _clip_window(out, use_window)
        low, high = use_window[0] - use_window[1] / 2, use_window[0] + use_window[1] / 2
    else:
        low, high = float(out.min()), float(out.max())
    if photometric == "MONOCHROME1":
        # MONOCHROME1: high values display dark. Mirror within the displayed range so that bright = dense,
        # as in every MONOCHROME2 image of the cohort.
        out = np.float32(low + high) - out
    return out.astype(np.float32, copy=False)


def _axial_slices(img: Any, indices: list[int]) -> np.ndarray:
    """Axial slices (superior axis) of a NIfTI image, as (n, H, W) with anterior up and patient right on
    the left (radiological display). Reads one slab covering the requested slices, not the whole volume
    (a .nii.gz must be decompressed up to the last slice read, so one read beats one per slice)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(img.affine)  # per array axis: (RAS axis, +1/-1)
    shape = img.shape[:3]
    s_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    stored = [shape[s_axis] - 1 - k if ornt[s_axis, 1] < 0 else k for k in indices]
    lo, hi = min(stored), max(stored)
    idx: list[Any] = [slice(None)] * 3
    idx[s_axis] = slice(lo, hi + 1)
    idx += [0] * (len(img.shape) - 3)  # 4-D and up: the first volume
    slab = np.asarray(img.dataobj[tuple(idx)], dtype=np.float32)
    in_plane = [a for a in range(3) if a != s_axis]
    x_ax = in_plane[0] if ornt[in_plane[0], 0] == 0 else in_plane[1]
    y_ax = in_plane[1] if x_ax == in_plane[0] else in_plane[0]
    out = []
    for k in stored:
        sl = np.take(slab, k - lo, axis=s_axis)
        plane = sl if x_ax == in_plane[0] else sl.T  # plane[x, y]
        if ornt[x_ax, 1] > 0:  # x increases to the patient's right: column 0 must be the rightmost
            plane = plane[::-1]
        if ornt[y_ax, 1] > 0:  # y increases anterior: row 0 must be the most anterior
            plane = plane[:, ::-1]
        out.append(np.ascontiguousarray(plane.T))  # plane[x, y] -> image[y, x]
    return np.stack(out)


def read_nifti(
    path: Path, selection: NiftiSelection | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    import nibabel as nib

    selection = selection or NiftiSelection()
    try:
        img = nib.load(str(path))
    except FileNotFoundError as err:
        raise ImageReadError(str(path), "file does not exist") from err
    except Exception as err:  # ImageFileError, gzip errors, header errors; type only, as for DICOM
        raise ImageReadError(str(path), f"not a readable NIfTI file ({type(err).__name__})") from err
    shape = img.shape
    try:
        if len(shape) == 2:
            return np.asarray(img.dataobj, dtype=np.float32).T[::-1].copy()
        depth = shape[int(np.flatnonzero(nib.orientations.io_orientation(img.affine)[:, 0] == 2)[0])]
        if selection.mode == "center":
            indices = [depth // 2]
        elif selection.mode == "center_stack":
            n = selection.slices
            if n > depth:
                raise ImageReadError(str(path), f"volume has {depth} axial slices, {n} were asked for")
            start = depth // 2 - n // 2
            indices = list(range(start, start + n))
        elif selection.mode == "random_triplet":
            if depth < 3:
                raise ImageReadError(str(path), f"volume has {depth} axial slices, a triplet needs 3")
            rng = rng if rng is not None else np.random.default_rng(0)
            indices = sorted(int(i) for i in rng.choice(depth, size=3, replace=False))
        else:
            raise ValueError(f"unknown NIfTI selection mode {selection.mode!r}")
        slices = _axial_slices(img, indices)
    except ImageReadError:
        raise
    except Exception as err:  # truncated data block, wrong dims (nibabel's message may quote the file name)
        raise ImageReadError(str(path), f"corrupt NIfTI data ({type(err).__name__})") from err
    return slices[0] if selection.mode == "center" else slices


def read_image(
    path: str | Path,
    *,
    window: tuple[float, float] | None = None,
    nifti: NiftiSelection | None = None,
    rng: np.random.Generator | None = None,
    header_window: bool = True,
) -> np.ndarray:
    """Read any supported image as float32: (H, W), or (C, H, W) for NIfTI slice stacks.

    `window=(centre, width)` clips to that range (in modality units for DICOM); without it a DICOM's own
    VOI window is used unless `header_window=False`. `nifti` picks the axial slices; `rng` drives the
    random triplet.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(str(path), "file does not exist")
    if path.is_dir():
        raise ImageReadError(str(path), "is a folder, not an image file")
    kind = image_kind(path)
    try:
        if kind == "nifti":
            out = read_nifti(path, nifti, rng)
            if window is not None:
                out = _clip_window(out, window)
        elif kind == "dicom":
            out = read_dicom(path, window, header_window=header_window)
        else:
            out = read_pil(path, window)
    except ImageReadError:
        raise
    except MemoryError as err:
        raise ImageReadError(str(path), "image too large to load") from err
    except Exception as err:  # a decoder bug or an odd file: still one skippable image, not a crash
        # any library's message may quote a header value (a name typed into a coded field) or the file's
        # name: a fixed phrase and the exception's type only
        raise ImageReadError(str(path), f"cannot be converted to an image ({type(err).__name__})") from err
    if out.size == 0:
        raise ImageReadError(str(path), "image has no pixels")
    return np.ascontiguousarray(out, dtype=np.float32)
