"""Background-patch control (Dhar & Shamir, seed 002): can blank background tell the site?

Patches with no anatomy in them — the four corners by default — carry nothing about the patient. If a
classifier still tells the site (or scanner, or the diagnosis) from them above chance, the images carry an
acquisition signature (noise level and texture, kernel, grid lines, offsets, burned-in marks), and any
model trained on the full images may be using it. Dhar & Shamir got 67 % (2 classes) and 41 % (4 classes)
from 20x20 corners of COVID radiographs with LeNet-5.

Here: each image is read and preprocessed exactly as for training (`PreprocessConfig`: robust intensity
scaling, resize to ``size``), the patches are cut at that resolution, described by simple statistics
(level, spread, quantiles, gradient and Laplacian energy, row/column structure, high-frequency power) or
raw pixels, and probed with the probe of every analysis (`embedx.analysis.probe_core`: class-balanced
linear SVM, subject-grouped folds). The score is balanced accuracy, with a cluster-bootstrap CI (subjects
resampled), a subject-respecting permutation p-value on label-free folds, and chance 1/K (the balanced
accuracy of any predictor that ignores the image). `encoded` is the verdict: p < alpha, the CI's lower bound
above chance, and a probe that predicts more than one class.

``auto=True`` picks the patch positions from the data instead of the corners: over a sample of images the
cells that are darkest, flattest and most constant across images (see `auto_positions`), the same positions
for every image so the features stay comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from embedx._version import __version__
from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe
from embedx.analysis.probe_result import ProbeResult
from embedx.analysis.typed import JsonResult
from embedx.errors import EmbedxError, ImageReadError
from embedx.privacy import scrub_path
from embedx.progress import progress_bar

if TYPE_CHECKING:
    from embedx.data.manifest import Manifest

log = logging.getLogger(__name__)

FEATURE_NAMES = (
    "mean",
    "std",
    "p05",
    "p50",
    "p95",
    "grad_x",
    "grad_y",
    "laplacian_std",
    "row_std",
    "col_std",
    "high_freq",
)


def corner_positions(size: int, patch: int) -> list[tuple[int, int]]:
    """Top-left (row, col) of the four corner patches: tl, tr, bl, br."""
    far = size - patch
    return [(0, 0), (0, far), (far, 0), (far, far)]


def auto_positions(images: np.ndarray, patch: int, n_patches: int = 4) -> list[tuple[int, int]]:
    """The ``n_patches`` non-overlapping cells that look most like empty background over ``images`` (n, S, S).

    Candidates are the cells of a half-patch grid that touch the image edge (empty background surrounds the
    body; inside the frame, dark lungs would otherwise pass for it). They are ranked on three things and the
    ranks summed: mean intensity (background is dark), mean within-patch spatial spread (no edges or ribs),
    and spread of the patch mean across images (anatomy moves from patient to patient; background does not).
    """
    size = images.shape[-1]
    step = max(1, patch // 2)
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    edge = {0, size - patch}
    cells = [(r, c) for r in starts for c in starts if r in edge or c in edge]
    crops = np.stack([images[:, r : r + patch, c : c + patch] for r, c in cells], axis=1)  # (n, cells, p, p)
    level = crops.mean(axis=(0, 2, 3))
    texture = crops.std(axis=(2, 3)).mean(axis=0)
    variation = crops.mean(axis=(2, 3)).std(axis=0)
    score = sum(np.argsort(np.argsort(v)) for v in (level, texture, variation))
    chosen: list[tuple[int, int]] = []
    for i in np.argsort(score, kind="stable"):
        r, c = cells[i]
        if all(abs(r - r2) >= patch or abs(c - c2) >= patch for r2, c2 in chosen):
            chosen.append((int(r), int(c)))
        if len(chosen) == n_patches:
            break
    return chosen


def patch_features(patch: np.ndarray) -> np.ndarray:
    """Statistics of one patch (P, P) that a noise/texture/offset signature changes (see FEATURE_NAMES)."""
    p = patch.astype(np.float64)
    q05, q50, q95 = np.percentile(p, [5, 50, 95])
    gx = np.abs(np.diff(p, axis=1)).mean()
    gy = np.abs(np.diff(p, axis=0)).mean()
    lap = ndimage.laplace(p, mode="reflect").std()
    row_std = p.mean(axis=1).std()
    col_std = p.mean(axis=0).std()
    spectrum = np.abs(np.fft.fft2(p - p.mean())) ** 2
    freq = np.fft.fftfreq(p.shape[0])
    radius = np.sqrt(freq[:, None] ** 2 + np.fft.fftfreq(p.shape[1])[None, :] ** 2)
    total = spectrum.sum()
    high = spectrum[radius > 0.25].sum() / total if total > 0 else 0.0
    return np.array([p.mean(), p.std(), q05, q50, q95, gx, gy, lap, row_std, col_std, high])


def extract_patches(
    manifest: Manifest,
    *,
    size: int = 128,
    patch: int = 20,
    auto: bool = False,
    n_auto_patches: int = 4,
    rows: Sequence[int] | None = None,
    preprocess_config=None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], list[dict]]:
    """Read, preprocess and cut patches: returns (patches (n, P, p, p), rows read, positions, failed).

    `rows read` are 0-based table positions (for indexing); `failed` is for people and JSON:
    `[{"row": N, "line": L, "reason": ...}]` with N and L as `embedx data check` prints them."""
    from embedx.data.preprocess import PreprocessConfig, load_image

    cfg = preprocess_config or PreprocessConfig(size=size)
    size = cfg.size
    if patch < 4 or 2 * patch > size:
        raise EmbedxError(
            f"--patch {patch} does not fit twice into the preprocessed size {size} (4 <= patch <= size/2)"
        )
    rows = list(range(len(manifest))) if rows is None else list(rows)
    images: list[np.ndarray] = []
    ok: list[int] = []
    failed: list[dict] = []
    with progress_bar(len(rows), "background patches: reading", unit="img") as advance:
        for row in rows:
            path = manifest.absolute_path(row)
            try:
                array = load_image(path, cfg)
            except ImageReadError as err:
                # {"row": N, "line": L} as `embedx data check` names rows (N from 1), never a 0-based index
                failed.append({**manifest.row_ref(int(row)), "reason": scrub_path(err.reason, path)})
                advance()
                continue
            images.append(array.mean(axis=0))  # channels averaged: the background is the same in each
            ok.append(int(row))
            advance()
    if failed:
        log.warning("background control: %d image(s) could not be read and were skipped", len(failed))
    if not images:
        raise EmbedxError(
            "background control: no image could be read (first problem: "
            f"{failed[0]['reason'] if failed else 'empty manifest'})"
        )
    stack = np.stack(images).astype(np.float32)
    if auto:
        sample = stack[np.random.default_rng(0).choice(len(stack), size=min(200, len(stack)), replace=False)]
        positions = auto_positions(sample, patch, n_auto_patches)
    else:
        positions = corner_positions(size, patch)
    patches = np.stack([stack[:, r : r + patch, c : c + patch] for r, c in positions], axis=1)
    return patches, np.asarray(ok, dtype=int), positions, failed


def features_of(patches: np.ndarray, mode: str = "stats") -> np.ndarray:
    """(n, P, p, p) patches -> (n, F) features: per-patch statistics, raw pixels, or both."""
    parts = []
    if mode in ("stats", "both"):
        parts.append(np.stack([np.concatenate([patch_features(p) for p in sample]) for sample in patches]))
    if mode in ("pixels", "both"):
        parts.append(patches.reshape(len(patches), -1).astype(np.float64))
    if not parts:
        raise EmbedxError(f"unknown feature mode {mode!r} (stats, pixels or both)")
    return np.concatenate(parts, axis=1)


@dataclass(frozen=True)
class BackgroundResult(JsonResult):
    """The background-patch probe and how the patches were taken; its JSON form is the probe's, flattened."""

    probe: ProbeResult
    attribute: str
    verdict: str
    patch: int
    size: int
    positions: list[list[int]]
    selection: str
    features: str
    n_missing: int = 0
    n_failed: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)  # {row (from 1), line (CSV), reason}
    manifest: str | None = None
    cnn: dict[str, Any] | None = None
    control: str = "background"
    model: str = "background-patches"
    embedx_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "probe"}
        if own["cnn"] is None:
            del own["cnn"]
        from embedx.analysis.typed import to_jsonable

        return to_jsonable({**self.probe.to_dict(), **own})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackgroundResult:
        if isinstance(data, BackgroundResult):
            return data
        own = {f.name for f in fields(cls)} - {"probe"}
        return cls(probe=ProbeResult.from_dict(data), **{k: v for k, v in data.items() if k in own})


def probe_features(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int = 5,
    n_permutations: int = 1000,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    attribute: str = "attribute",
) -> ProbeResult:
    """The probe on patch features: balanced accuracy, CI, chance 1/K, permutation p (design-card shape)."""
    y = np.asarray(y).astype(str)
    classes = np.unique(y)
    if len(classes) < 2:
        raise EmbedxError(
            f"the attribute has a single value ({classes[0] if len(classes) else 'none'}): "
            "nothing to tell apart"
        )
    cfg = ProbeConfig(
        folds=folds, n_permutations=n_permutations, n_bootstrap=n_bootstrap, alpha=alpha, seed=seed
    )
    result = cross_validated_probe(
        X,
        y,
        groups,
        "categorical" if len(classes) > 2 else "binary",
        model="background-patches",
        attribute=attribute,
        config=cfg,
    )
    if result.skipped:
        raise EmbedxError(f"background control: {result.skipped}")
    return result


def background_control(
    manifest,
    attribute: str,
    patch: int = 20,
    *,
    size: int = 128,
    auto: bool = False,
    features: str = "stats",
    folds: int = 5,
    n_permutations: int = 1000,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    max_images: int | None = None,
    cnn: bool = False,
    cnn_epochs: int = 30,
    store_path: str | Path | None = None,
) -> BackgroundResult:
    """Probe ``attribute`` from background patches of the manifest's images (see the module doc).

    ``manifest`` is a `Manifest` or a path to one. With ``store_path`` the result is also written to that
    store under `/analysis/controls/background__<attribute>` so that the report and dashboard show it.
    """
    from embedx.data.manifest import Manifest, load_manifest

    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    if attribute not in manifest.table.columns or attribute in ("path", "subject_id"):
        raise EmbedxError(f"manifest has no attribute {attribute!r}; it has {', '.join(manifest.attributes)}")
    table = manifest.table
    rows = np.flatnonzero(table[attribute].notna().to_numpy())
    n_missing = len(table) - len(rows)
    if max_images is not None and len(rows) > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_images, replace=False))
    patches, ok, positions, failed = extract_patches(manifest, size=size, patch=patch, auto=auto, rows=rows)
    X = features_of(patches, features)
    labels = table[attribute].to_numpy()[ok]
    y = np.array([str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v) for v in labels])
    groups = table["subject_id"].astype(str).to_numpy()[ok]
    probe = probe_features(
        X,
        y,
        groups,
        folds=folds,
        n_permutations=n_permutations,
        n_bootstrap=n_bootstrap,
        alpha=alpha,
        seed=seed,
        attribute=attribute,
    )
    verdict = (
        "acquisition signature: the attribute is readable from blank background"
        if probe.encoded
        else "not distinguishable from chance on blank background"
    )
    cnn_result = None
    if cnn:
        from embedx.analysis.background_cnn import cnn_on_patches

        cnn_result = cnn_on_patches(
            patches, y, groups, folds=folds, epochs=cnn_epochs, n_bootstrap=n_bootstrap, seed=seed
        )
    out = BackgroundResult(
        probe=probe,
        attribute=attribute,
        verdict=verdict,
        patch=patch,
        size=size,
        positions=[list(p) for p in positions],
        selection="auto (darkest, flattest grid cells)" if auto else "corners",
        features=features,
        n_missing=int(n_missing),
        n_failed=len(failed),
        failed=failed[:100],
        manifest=str(manifest.source) if manifest.source else None,
        cnn=cnn_result,
    )
    if store_path is not None:
        from embedx.store.h5store import Store

        with Store.open(store_path, "a") as store:
            store.write_analysis("controls", f"background__{attribute}", out.to_dict())
    return out
