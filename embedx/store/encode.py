"""`embedx encode`: stream a cohort through a trained model into the store, resumably.

Resumable by construction: the samples table is keyed by sample id, and only rows whose `encoded` flag is
unset are encoded, so rerunning the same command after a crash (or with a manifest that grew) encodes
exactly the missing rows. Under `accelerate launch` every process encodes a contiguous shard of the
pending rows into its own shard file and the main process merges them (see `shards.py`); the main process
holds the store's writer lock throughout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from embedx._version import __version__
from embedx.data.dataset import ImageDataset, make_loader
from embedx.data.images import NIFTI_SUFFIXES
from embedx.data.manifest import Manifest, load_manifest
from embedx.errors import EmbedxError, StoreError
from embedx.privacy import scrub_path
from embedx.progress import progress_bar
from embedx.store.h5io import escape_name, now_iso
from embedx.store.h5store import THUMB_SIZE, Store
from embedx.store.identity import plan_identity, record_manifest
from embedx.store.shards import ShardWriter, merge_shards, shard_dir

log = logging.getLogger(__name__)

PREFLIGHT_ROWS = 8
NON_FINITE = "the model gave non-finite values (NaN or inf) for this image"


@dataclass
class EncodeResult:
    store: Path
    name: str
    kind: str
    n_manifest: int  # rows of the manifest
    n_new_samples: int  # rows the store gained
    n_skipped_done: int  # rows already encoded before this run (not recomputed)
    n_encoded_now: int
    n_encoded_total: int  # of the manifest's rows, after this run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sample id, reason)
    warnings: list[str] = field(default_factory=list)  # about the cohort's identity (moved, duplicated)


def thumbnail_tensor(images: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) in [-1, 1] -> (B, 64, 64) uint8 on the images' device: the channel mean (a slice stack's
    middle tone), resized with antialiasing when shrinking. Stays on the device so that on a GPU it is
    queued behind the forward pass instead of waiting for it."""
    grey = images.float().mean(dim=1, keepdim=True)
    if grey.shape[-2:] != (THUMB_SIZE, THUMB_SIZE):
        shrink = grey.shape[-1] > THUMB_SIZE
        grey = F.interpolate(grey, size=(THUMB_SIZE, THUMB_SIZE), mode="bilinear", align_corners=False,
                             antialias=shrink)
    return ((grey[:, 0].clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def make_thumbnails(images: torch.Tensor) -> np.ndarray:
    """`thumbnail_tensor` as a host numpy array."""
    return thumbnail_tensor(images).cpu().numpy()


def _volume(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


@contextlib.contextmanager
def _quiet_manifest_logs() -> Iterator[None]:
    """No warnings from reading a manifest (only errors), for the training manifest encode re-reads to learn
    which image kinds the run saw: "manifest.csv: 5 attribute(s) not declared" about that file, printed while
    another file is being encoded, reads as a warning about the file being encoded. The loggers under
    `embedx.data` have no level of their own, so the parent's level governs them."""
    logger = logging.getLogger("embedx.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_manifest_fits_run(run: object, manifest: Manifest) -> None:
    """Refuse a manifest whose images are not what the run was trained on.

    Two checks: volumes (NIfTI) vs 2-D images against the training manifest when it is still there, and
    a trial read + preprocessing of the first rows, which catches a channel mismatch or unreadable data
    before the store is touched.
    """
    paths = manifest.table["path"].astype(str).tolist()
    if not paths:
        raise EmbedxError(f"{manifest.source}: the manifest has a header but no rows; nothing to encode")
    info = getattr(run, "info", {}) or {}
    train_manifest = info.get("manifest")
    if train_manifest and Path(train_manifest).exists():
        try:  # every kind the run saw (a scanned folder mixes 2-D images and NIfTI centre slices)
            with _quiet_manifest_logs():  # its warnings were given at training, about that file
                trained = load_manifest(train_manifest, check_files=False)
            trained_kinds = {_volume(str(p)) for p in trained.table["path"]}
        except EmbedxError:
            trained_kinds = set()
        if trained_kinds and not {_volume(p) for p in paths} <= trained_kinds:
            want = "NIfTI volumes" if True in trained_kinds else "2-D images (PNG/JPEG/TIFF/DICOM)"
            odd = next(i for i, p in enumerate(paths) if _volume(p) not in trained_kinds)
            raise EmbedxError(
                f"{manifest.source}: {manifest.where(odd)} ({paths[odd]}) does not match the run: "
                f"{_label(run)} was trained on {want} only (training manifest {train_manifest})"
            )
    pre = run.preprocess  # type: ignore[attr-defined]
    first = np.arange(min(PREFLIGHT_ROWS, len(paths)))
    if first.size == 0:
        raise EmbedxError(f"{manifest.source}: the manifest has no rows")
    dataset = ImageDataset(manifest, pre, rows=first, train=False)
    reasons = []
    for i in range(len(dataset)):
        where = manifest.where(int(first[i]))  # 'row N (line L)', as `embedx data check` names rows
        try:
            item = dataset[i]
        except EmbedxError as err:  # unreadable files come back as items; this is a config mismatch
            raise EmbedxError(
                f"{manifest.source}: {where} ({paths[int(first[i])]}) cannot be prepared as run "
                f"{_label(run)} prepares its images: {err}"
            ) from err
        if "error" not in item:
            shape = tuple(item["image"].shape)
            if shape != (pre.channels, pre.size, pre.size):
                raise EmbedxError(f"{manifest.source}: {where} preprocesses to {shape}, the run expects "
                                  f"{(pre.channels, pre.size, pre.size)}")
            return
        reasons.append(f"{where}: {item['error']}")
    raise EmbedxError(
        f"{manifest.source}: none of the first {first.size} images can be prepared as run {_label(run)} "
        f"prepares them (size {pre.size}, channels {pre.channels}):\n  " + "\n  ".join(reasons)
    )


def _label(run: object) -> str:
    return str(getattr(run, "run_dir", None) or f"the {getattr(run, 'kind', 'encoder')} encoder")


def _provenance(run: object, manifest: Manifest) -> dict[str, str]:
    classes = getattr(run, "classes", None)
    run_dir = getattr(run, "run_dir", None)
    describe = getattr(run, "describe", None)
    return {
        "kind": run.kind,  # type: ignore[attr-defined]
        "run_dir": str(Path(run_dir).resolve()) if run_dir else "",
        "checkpoint_hash": run.checkpoint_hash,  # type: ignore[attr-defined]
        "config": json.dumps(describe()) if describe else run.config.to_yaml(),  # type: ignore[attr-defined]
        "preprocess": run.preprocess.model_dump_json(),  # type: ignore[attr-defined]
        "embedx_version": __version__,
        "date": now_iso(),
        "classes": json.dumps(classes) if classes else "",
        "manifest": Path(manifest.source).name if manifest.source else "",
    }


def _latent_dim(run: object, device: torch.device) -> int:
    pre = run.preprocess  # type: ignore[attr-defined]
    with torch.no_grad():
        probe = torch.zeros(1, pre.channels, pre.size, pre.size, device=device)
        return int(run.model.embed(probe).shape[1])  # type: ignore[attr-defined]


def _pending(store: Store, name: str, rows: np.ndarray, stochastic: bool) -> np.ndarray:
    need = ~store.encoded_mask(name)[rows]
    if stochastic:
        need |= ~store.stochastic_mask(name)[rows]
    return np.flatnonzero(need)


def _default_workers(device: torch.device) -> int:
    """Decoding workers. On a GPU node: enough to feed it (all cores but the one driving the GPU, at most
    8). On a CPU-only machine: one per core, niced (see `make_loader`), decoding in the forward's gaps."""
    cores = os.cpu_count() or 2
    if device.type == "cpu":
        return max(1, min(4, cores))
    return max(1, min(8, cores - 1))


Sink = Callable[[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"], None]


class BackgroundWriter:
    """Runs the per-batch tail (device-to-host copy, HDF5 write and flush) on a thread, one batch behind.

    Why: written inline, every HDF5 write and every host copy is time in which the model waits; on a GPU
    the device idles for each of them. Here the forward pass of batch i+1 runs while batch i is written.
    One thread and a FIFO queue keep the writes in order, so the store's crash-safe write order (latents,
    flush, then the `encoded` flags) is unchanged; the bounded queue caps the batches held in memory. The
    thread does no torch compute (so no second OpenMP team competes with the model's): thumbnails are
    computed by the caller on the device.
    """

    def __init__(self, sink: Sink, depth: int = 2) -> None:
        self._sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="embedx-encode-writer", daemon=True)
        self._thread.start()

    def put(self, rows: np.ndarray, z: torch.Tensor, thumbs: torch.Tensor, xt: torch.Tensor | None) -> None:
        self._raise_if_failed()
        self._queue.put((rows, z, thumbs, xt))

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that `put` never blocks on a dead writer
            rows, z, thumbs, xt = item
            try:
                host_xt = None if xt is None else xt.float().cpu().numpy()
                self._sink(rows, z.float().cpu().numpy(), thumbs.cpu().numpy(), host_xt)
            except BaseException as err:  # re-raised in the caller's thread
                self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, raise_errors: bool = True) -> None:
        """Write what is queued, stop the thread, and re-raise a write error in the caller's thread."""
        self._queue.put(None)
        self._thread.join()
        if raise_errors:
            self._raise_if_failed()


def _run_batches(run: object, manifest: Manifest, manifest_rows: np.ndarray, store_rows: np.ndarray,
                 sink: Sink, batch_size: int, workers: int, stochastic: bool, steps: int | None,
                 device: torch.device, show_progress: bool) -> list[tuple[int, str]]:
    """Encode `manifest_rows`; call `sink(store_rows, z, thumbs, xt)` per batch, in order, from a writer
    thread; return the failures."""
    if manifest_rows.size == 0:
        return []
    to_store = dict(zip(manifest_rows.tolist(), store_rows.tolist(), strict=True))
    dataset = ImageDataset(manifest, run.preprocess, rows=manifest_rows, train=False)  # type: ignore[attr-defined]
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers,
                         worker_nice=10 if device.type == "cpu" else 0)
    model = run.model  # type: ignore[attr-defined]
    failed: list[tuple[int, str]] = []
    total = int(manifest_rows.size) if show_progress else None
    bar = progress_bar(total, f"encode {run.kind}", unit="img") if show_progress else _nullbar()  # type: ignore[attr-defined]
    writer = BackgroundWriter(sink)
    ok = False
    try:
        with bar as advance, torch.no_grad():
            for batch in loader:
                failed.extend(batch["failed"])
                if batch["row"].numel():
                    images = batch["image"].to(device, non_blocking=True)
                    z = model.embed(images)
                    xt = model.encode_stochastic(images, None, steps) if stochastic else None
                    rows = np.array([to_store[int(r)] for r in batch["row"]], dtype=np.int64)
                    finite = torch.isfinite(z).all(dim=1).cpu().numpy()
                    if not finite.all():  # a diverged model or a broken backbone: listed, not "encoded"
                        failed.extend((int(r), NON_FINITE) for r, ok in zip(batch["row"], finite, strict=True)
                                      if not ok)
                        keep = torch.from_numpy(finite).to(z.device)
                        images, z, rows = images[keep], z[keep], rows[finite]
                        xt = None if xt is None else xt[keep]
                    if rows.size:
                        writer.put(rows, z, thumbnail_tensor(images), xt)
                advance(int(batch["row"].numel()) + len(batch["failed"]))
        ok = True
    finally:
        # Batches already computed are written even when the loop stops early (Ctrl-C): less to redo.
        writer.close(raise_errors=ok)
    return failed


class _nullbar:  # noqa: N801 - used like the progress_bar context manager
    def __enter__(self):
        return lambda n=1, **_: None

    def __exit__(self, *exc: object) -> None:
        return None


def encode(
    run_dir: str | Path | Any,
    manifest: str | Path | Manifest,
    store_path: str | Path,
    name: str | None = None,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    stochastic: bool = False,
    steps: int | None = None,
    cohort: str = "",
) -> EncodeResult:
    """Encode every not-yet-encoded row of `manifest` with the run's model into `/embeddings/<name>`.

    `run_dir` is a finished training run's folder, or an encoder object shaped like a loaded run (`model`
    with `embed`, `preprocess`, `kind`, `checkpoint_hash`, `describe()`), e.g. the pixel reference.

    `cohort` names the cohort when one store holds several whose manifests write the same paths.

    Under `accelerate launch` with several processes, every process must call this with the same
    arguments; the result is complete on the main process.
    """
    from accelerate import PartialState

    from embedx.training.checkpoint import load_trained

    given = None if isinstance(run_dir, (str, Path)) else run_dir
    if given is None:
        run_dir = Path(run_dir)  # type: ignore[arg-type]
        if not run_dir.is_dir():
            raise EmbedxError(f"run folder {run_dir} does not exist")
        name = name or run_dir.resolve().name
    else:
        name = name or given.kind
    escape_name(name)
    if "\x00" in cohort or cohort != cohort.strip():
        raise EmbedxError(f"--cohort {cohort!r}: use a plain name (no leading or trailing spaces)")
    if batch_size < 1:
        raise EmbedxError(f"--batch-size must be at least 1, got {batch_size}")
    state = PartialState()
    device = state.device
    run = load_trained(run_dir, device=device) if given is None else given.to(device)
    if stochastic and not hasattr(run.model, "encode_stochastic"):
        raise EmbedxError(f"--stochastic needs a diffusion autoencoder; {run_dir} is a {run.kind}")
    # Missing files are skipped and listed like unreadable ones, not fatal: hence check_files=False.
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, check_files=False)
    check_manifest_fits_run(run, man)
    workers = _default_workers(device) if workers is None else int(workers)
    dim = _latent_dim(run, device)
    pre = run.preprocess
    xt_shape = (pre.channels, pre.size, pre.size) if stochastic else None
    ids = np.empty(len(man), dtype=object)  # the store's ids (salted per store): known once it is open
    world, rank, main = state.num_processes, state.process_index, state.is_main_process
    warnings: list[str] = []

    store: Store | None = None
    if main:
        store = Store.open(store_path, "a")
    try:
        if main:
            assert store is not None
            before_n = store.n
            _check_same_checkpoint(store, name, run.checkpoint_hash)
            plan = plan_identity(store, man, cohort)
            ids = plan.ids
            warnings = plan.warnings()
            for text in warnings:
                log.warning("%s", text)
            rows = store.add_samples(ids, man.table["subject_id"], man.table[man.attributes], man.schema,
                                     pseudonymise=True,
                                     extra={"fingerprint": plan.fingerprints, "filestat": plan.stats,
                                            "cohort": [cohort] * len(ids)},
                                     row_name=man.where)  # a bad value: 'row N (line L)' of the manifest
            record_manifest(store, man, cohort)
            store.ensure_embedding(name, dim, _provenance(run, man), xt_shape)
            if hasattr(run, "arrays"):  # state needed to encode later rows alike (plain arrays)
                store.write_model_arrays(name, run.arrays())
            merged, _ = merge_shards(store, name)  # work left by a crashed multi-process run
            if merged:
                log.info("merged %d rows from shards of an interrupted run", merged)
            n_new = store.n - before_n
        if world > 1:
            state.wait_for_everyone()
        if not main:
            with Store.open(store_path) as reader:
                ids = reader.ids_for(man, cohort).astype(object)
                rows = reader.rows_of(ids)
                pending = _pending(reader, name, rows, stochastic)
        else:
            assert store is not None
            pending = _pending(store, name, rows, stochastic)
        n_pending = int(pending.size)

        if world == 1:
            assert store is not None
            failed_rows = _run_batches(
                run, man, pending, rows[pending],
                lambda r, z, t, x: store.write_latents(name, r, z, t, x),
                batch_size, workers, stochastic, steps, device, show_progress=True,
            )
            failed = [(str(ids[r]), reason) for r, reason in failed_rows]
        else:
            mine = np.array_split(pending, world)[rank]
            writer = ShardWriter(shard_dir(store_path, name) / f"rank{rank:03d}.h5", rows[mine], ids[mine],
                                 dim, xt_shape)
            failed_rows = _run_batches(run, man, mine, rows[mine], writer.write, batch_size, workers,
                                       stochastic, steps, device, show_progress=main)
            writer.finish([(str(ids[r]), reason) for r, reason in failed_rows])
            state.wait_for_everyone()
            failed = []
            if main:
                assert store is not None
                _, failed = merge_shards(store, name)

        if main:
            assert store is not None
            # the store is shared: a failure's reason keeps no trace of the file's path (often a name)
            row_of = {sid: i for i, sid in enumerate(ids.tolist())} if failed else {}
            reasons = [scrub_path(reason, man.absolute_path(row_of[sid])) for sid, reason in failed]
            store.set_failed(name, [f[0] for f in failed], reasons)
            store.set_embedding_attrs(name, date_finished=now_iso(), n_failed=len(failed))
            done = int(store.encoded_mask(name)[rows].sum())
            result = EncodeResult(
                store=Path(store_path), name=name, kind=run.kind, n_manifest=len(ids), n_new_samples=n_new,
                n_skipped_done=len(ids) - n_pending, n_encoded_now=n_pending - len(failed),
                n_encoded_total=done, failed=failed, warnings=warnings,
            )
        else:
            result = EncodeResult(store=Path(store_path), name=name, kind=run.kind, n_manifest=len(ids),
                                  n_new_samples=0, n_skipped_done=0, n_encoded_now=0, n_encoded_total=0)
    finally:
        if store is not None:
            store.close()
    if world > 1:
        state.wait_for_everyone()
    return result


def _check_same_checkpoint(store: Store, name: str, checkpoint_hash: str) -> None:
    if name not in store.models():
        return
    have = str(store.embedding_info(name).get("checkpoint_hash", ""))
    if have and have != checkpoint_hash:
        raise StoreError(
            f"{store.path}: model {name!r} holds latents of checkpoint {have[:12]}…, this run's weights are "
            f"{checkpoint_hash[:12]}…; encode into another --name (or a new store) to keep them apart"
        )
