"""Whole 3-D volumes for the 3-D experiments, brought to one grid with MONAI's transforms.

Each manifest row is one NIfTI volume (and, for segmentation, its `lesion_mask`). MONAI's transforms do the
geometry, the way a MONAI user would: `Orientation` to RAS (manufacturers store axes differently),
intensity windowing (`ScaleIntensityRange` on a CT's HU window: the seed's level 50 / width 100;
`ScaleIntensityRangePercentiles` 0.5-99.5 % on volumes in arbitrary units, e.g. MRI), then either `Resize`
to a fixed voxel grid (the seed fed every series at 256 x 256 x 35, whatever its spacing) or `Spacing` to
isotropic millimetres and `ResizeWithPadOrCrop` (physical size kept; the grid's voxel count fixed). Masks
follow with nearest-neighbour interpolation.

Volumes are cached in memory as float16 (a 64^3 volume is 0.5 MB; the seed's 256 x 256 x 32 is 4 MB, so
2,000 series fit in 8 GB of host memory); a file that cannot be read is listed by row, not fatal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedx.data.manifest import Manifest
from embedx.errors import EmbedxError
from embedx.privacy import scrub_path
from embedx.progress import progress_bar

log = logging.getLogger(__name__)

CT_MIN = -500.0  # a volume whose minimum lies below this holds air in HU: a CT
CT_WINDOW = (50.0, 100.0)  # seed 001: level 50, width 100 HU -> [0, 1]
MASK_COLUMN = "lesion_mask"


@dataclass(frozen=True)
class VolumeGrid:
    """The grid every volume is brought to before a 3-D model sees it."""

    shape: tuple[int, int, int] = (48, 48, 48)
    spacing_mm: float | None = None  # None: resize the whole field of view to `shape`
    window: str = "auto"  # auto | percentile | "LEVEL,WIDTH" (HU)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise EmbedxError(f"--shape must be three sizes of at least 8 voxels, got {self.shape}")
        if self.spacing_mm is not None and self.spacing_mm <= 0:
            raise EmbedxError(f"--spacing must be positive (mm), got {self.spacing_mm}")
        parse_window(self.window)


def parse_window(window: str) -> tuple[float, float] | str:
    """`auto` / `percentile`, or (level, width) from "LEVEL,WIDTH"."""
    if window in ("auto", "percentile"):
        return window
    try:
        level, width = (float(v) for v in window.split(","))
    except ValueError:
        raise EmbedxError(f"--window {window!r}: use auto, percentile or LEVEL,WIDTH (e.g. 50,100)") from None
    if width <= 0:
        raise EmbedxError(f"--window {window!r}: the width must be positive")
    return level, width


def parse_shape(text: str) -> tuple[int, int, int]:
    """ "48" -> (48, 48, 48); "64,64,32" -> (64, 64, 32)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise EmbedxError(f"--shape {text!r}: give one size or three, e.g. 48 or 256,256,32") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise EmbedxError(f"--shape {text!r}: give one size or three, e.g. 48 or 256,256,32")
    return values[0], values[1], values[2]


def _window_transform(volume: np.ndarray, window: str):
    from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentiles

    parsed = parse_window(window)
    if parsed == "auto":
        parsed = CT_WINDOW if float(volume.min()) < CT_MIN else "percentile"
    if parsed == "percentile":
        return ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    level, width = parsed  # type: ignore[misc]
    return ScaleIntensityRange(
        a_min=level - width / 2, a_max=level + width / 2, b_min=0.0, b_max=1.0, clip=True
    )


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    image = nib.load(str(path))
    volume = np.asarray(image.dataobj, dtype=np.float32)
    while volume.ndim > 3 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise EmbedxError(f"expected a 3-D volume, got shape {volume.shape}")
    if not np.isfinite(volume).all():
        raise EmbedxError("the volume holds NaN or infinite values")
    return volume, np.asarray(image.affine, dtype=np.float64)


def _reason(err: Exception) -> str:
    """A failure reason for shift.json: our own messages (shapes, NaN) as they are; a library's (nibabel,
    MONAI) as a fixed phrase and its type only, since its message may quote the header or the file name
    and shift.json is shared (DESIGN: no PHI, not even in failure reasons)."""
    if isinstance(err, EmbedxError):
        return str(err)
    return f"not a readable NIfTI volume, or it cannot be brought to the grid ({type(err).__name__})"


def _to_grid(
    volume: np.ndarray, affine: np.ndarray, grid: VolumeGrid, mask: bool
) -> tuple[torch.Tensor, float]:
    """(1, D, H, W) on the grid, and the volume of one grid voxel in mL."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Resize, ResizeWithPadOrCrop, Spacing

    tensor = MetaTensor(torch.from_numpy(volume)[None], affine=torch.from_numpy(affine))
    tensor = Orientation(axcodes="RAS")(tensor)
    if not mask:
        tensor = _window_transform(volume, grid.window)(tensor)
    if grid.spacing_mm is not None:
        tensor = Spacing(pixdim=(grid.spacing_mm,) * 3, mode="nearest" if mask else "bilinear")(tensor)
        tensor = ResizeWithPadOrCrop(grid.shape)(tensor)
    else:
        tensor = Resize(grid.shape, mode="nearest" if mask else "trilinear")(tensor)
    voxel_ml = float(np.prod(np.asarray(tensor.pixdim, dtype=float)[:3])) / 1000.0
    return tensor.as_tensor(), voxel_ml


@dataclass
class Volumes:
    """The readable volumes of some manifest rows, on one grid."""

    x: torch.Tensor  # (n, 1, D, H, W) float16 in [0, 1]
    masks: torch.Tensor | None  # (n, 1, D, H, W) uint8, zeros for negatives; None without masks
    rows: np.ndarray  # manifest row of each volume
    voxel_ml: np.ndarray  # mL per grid voxel, per volume
    lesion_radius_mm: np.ndarray  # equivalent-sphere radius of the mask at its own resolution; NaN: none
    failed: list[tuple[int, str]]


def load_volumes(
    manifest: Manifest, rows: Sequence[int], grid: VolumeGrid, *, masks: bool = False
) -> Volumes:
    """Read `rows` onto `grid`; with `masks`, also each row's `lesion_mask` (empty where it has none)."""
    if masks and MASK_COLUMN not in manifest.table.columns:
        raise EmbedxError(
            f"{manifest.source}: segmentation needs a {MASK_COLUMN!r} column (a NIfTI mask per "
            "positive volume, as `embedx data lesions` writes)"
        )
    images, kept, kept_masks, voxel, radius, failed = [], [], [], [], [], []
    with progress_bar(len(rows), "shift: reading volumes", unit="vol") as advance:
        for row in rows:
            row = int(row)
            source = manifest.absolute_path(row)
            try:
                volume, affine = _read(source)
                image, voxel_ml = _to_grid(volume, affine, grid, mask=False)
                lesion, r_mm = None, float("nan")
                if masks:
                    lesion, r_mm = _mask_for(manifest, row, volume.shape, affine, grid)
            except Exception as err:  # nibabel and MONAI raise many types for a broken file
                failed.append((row, scrub_path(_reason(err), source)))
                advance(1)
                continue
            images.append(image.to(torch.float16))
            kept.append(row)
            voxel.append(voxel_ml)
            radius.append(r_mm)
            if lesion is not None:
                kept_masks.append(lesion)
            advance(1)
    if failed:
        log.warning(
            "%d volume(s) could not be read and are left out (listed in shift.json; first: %s: %s)",
            len(failed),
            manifest.where(failed[0][0]),  # 'row N (line L)', as `embedx data check` names rows
            failed[0][1],
        )
    if not images:
        raise EmbedxError(
            f"{manifest.source}: none of the {len(rows)} volumes could be read "
            f"(first: {failed[0][1] if failed else 'no rows'})"
        )
    return Volumes(
        x=torch.stack(images),
        masks=torch.stack(kept_masks) if masks else None,
        rows=np.asarray(kept, dtype=np.int64),
        voxel_ml=np.asarray(voxel),
        lesion_radius_mm=np.asarray(radius),
        failed=failed,
    )


def _mask_for(
    manifest: Manifest, row: int, shape: tuple[int, ...], affine: np.ndarray, grid: VolumeGrid
) -> tuple[torch.Tensor, float]:
    """The row's lesion mask on the grid (zeros when it has none) and its equivalent-sphere radius in mm."""
    value = manifest.table[MASK_COLUMN].iloc[row]
    if not isinstance(value, str) or not value.strip():
        return torch.zeros((1, *grid.shape), dtype=torch.uint8), float("nan")
    path = Path(value) if Path(value).is_absolute() else manifest.root / value
    try:
        mask, mask_affine = _read(path)
    except Exception as err:
        raise EmbedxError(f"its {MASK_COLUMN}: {scrub_path(_reason(err), path)}") from None
    if mask.shape != shape or not np.allclose(mask_affine, affine, atol=1e-3):
        raise EmbedxError(f"its {MASK_COLUMN} does not lie on the volume's grid ({mask.shape} vs {shape})")
    binary = (mask > 0).astype(np.float32)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    radius = (binary.sum() * voxel_mm3 * 3 / (4 * math.pi)) ** (1 / 3) if binary.any() else float("nan")
    on_grid, _ = _to_grid(binary, affine, grid, mask=True)
    return (on_grid > 0.5).to(torch.uint8), float(radius)
