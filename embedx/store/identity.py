"""Match a manifest's rows to a store's rows without merging two cohorts or counting one image twice.

Three cases the path-keyed sample id alone gets wrong, and what is done about each:

- **Another cohort, same paths** (`images/000000.png` in both): rows whose id is already in the store are
  spot-checked by content fingerprint (up to `CHECK_ROWS` of them, chosen at random). A different file at a
  stored path means another cohort or replaced images; the encode is refused, naming the rows, and
  `--cohort NAME` keeps the second cohort apart (its ids include the name).
- **The same image under another path** (a moved folder, a new mount point): a new row whose fingerprint
  equals a stored row's that this manifest does not otherwise claim *is* that row; the stored row takes the
  new id and keeps its latents, so nothing is encoded or counted twice.
- **Two rows of one manifest with the same content** (a copied file): kept (they are two files), but
  reported, because a copy shared by two subjects leaks across folds.

Fingerprints are stored per row (`/samples/fingerprint`), with the cohort name (`/samples/cohort`); stores
written before fingerprints existed are matched by id only, as before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedx.data.identity import fingerprints
from embedx.data.manifest import Manifest
from embedx.errors import StoreError
from embedx.progress import progress_bar
from embedx.store.h5store import Store, now_iso

CHECK_ROWS = 64
COHORTS_ATTR = "cohorts"
MAX_NAMED = 5


@dataclass
class IdentityPlan:
    """What `add_samples` should be given, and what the user should be told."""

    ids: np.ndarray  # the sample id of each manifest row (input order)
    fingerprints: np.ndarray  # per manifest row; "" where unknown (unreadable file, or an older store's row)
    cohort: str
    n_moved: int = 0  # rows found in the store by content under another path
    duplicates: list[list[int]] = field(default_factory=list)  # groups of manifest rows with one content

    def warnings(self) -> list[str]:
        out = []
        if self.n_moved:
            out.append(f"{self.n_moved} row(s) are images already in the store under another path (a moved "
                       "folder?): they keep their latents and take the new path")
        if self.duplicates:
            groups = self.duplicates
            shown = "; ".join(", ".join(f"row {r + 1}" for r in group) for group in groups[:MAX_NAMED])
            more = f" and {len(groups) - MAX_NAMED} more" if len(groups) > MAX_NAMED else ""
            out.append(f"{len(groups)} image(s) appear more than once in the manifest under different "
                       f"paths ({shown}{more}); each copy is a row of its own: remove unintended copies")
        return out


def _paths(man: Manifest, rows: np.ndarray) -> list[Path]:
    return [man.absolute_path(int(r)) for r in rows]


def _fingerprint_rows(man: Manifest, rows: np.ndarray, show: bool) -> list[str]:
    if not show or rows.size < 1000:
        return fingerprints(_paths(man, rows))
    with progress_bar(int(rows.size), "identify images", unit="file") as advance:
        return fingerprints(_paths(man, rows), progress=advance)


def _refuse_other_cohort(store: Store, man: Manifest, differ: list[int], checked: int, cohort: str) -> None:
    named = ", ".join(f"row {r + 1} {man.table.at[r, 'path']!r}" for r in differ[:MAX_NAMED])
    where = f" in cohort {cohort!r}" if cohort else ""
    raise StoreError(
        f"{store.path}: {len(differ)} of {checked} checked row(s) of this manifest have the path of a row "
        f"already in the store{where} but hold a different image ({named}). This is another cohort, or the "
        "images were replaced since they were encoded. Keep the cohorts apart with `--cohort NAME` (the "
        "rows get their own ids), or encode into a new store."
    )


def plan_identity(store: Store, man: Manifest, cohort: str = "", show_progress: bool = True,
                  seed: int = 0) -> IdentityPlan:
    """Check the manifest against the store and rename moved rows; returns the ids and fingerprints to add."""
    ids = man.sample_ids(cohort).astype(object)
    rows = store.rows_of(ids, missing_ok=True)
    stored_fp = store.sample_strings("fingerprint")
    fps = np.full(len(ids), "", dtype=object)

    colliding = np.flatnonzero(rows >= 0)
    fps[colliding] = stored_fp[rows[colliding]]
    known = colliding[fps[colliding] != ""]
    if known.size:
        rng = np.random.default_rng(seed)
        check = np.sort(rng.choice(known, size=min(CHECK_ROWS, known.size), replace=False))
        now = np.asarray(fingerprints(_paths(man, check)), dtype=object)
        differ = [int(r) for r, fp in zip(check, now, strict=True) if fp and fp != fps[r]]
        if differ:
            _refuse_other_cohort(store, man, differ, int(check.size), cohort)

    new = np.flatnonzero(rows < 0)
    if new.size:
        fps[new] = _fingerprint_rows(man, new, show_progress)
    plan = IdentityPlan(ids=ids, fingerprints=fps, cohort=cohort)
    plan.n_moved = _adopt_moved_rows(store, plan, rows, new)
    plan.duplicates = _duplicate_groups(fps)
    return plan


def _adopt_moved_rows(store: Store, plan: IdentityPlan, rows: np.ndarray, new: np.ndarray) -> int:
    """Stored rows this manifest does not claim by id, whose content a new row has, take that row's id."""
    if not new.size or store.n == 0:
        return 0
    stored_fp = store.sample_strings("fingerprint")
    stored_cohort = store.sample_strings("cohort")
    claimed = np.zeros(store.n, dtype=bool)
    claimed[rows[rows >= 0]] = True
    free = np.flatnonzero(~claimed & (stored_fp != "") & (stored_cohort == plan.cohort))
    by_content = {stored_fp[r]: int(r) for r in free}
    moved_rows, moved_ids = [], []
    for i in new:
        row = by_content.pop(plan.fingerprints[i], None) if plan.fingerprints[i] else None
        if row is not None:
            moved_rows.append(row)
            moved_ids.append(plan.ids[i])
    if moved_rows:
        store.rename_samples(np.asarray(moved_rows, dtype=np.int64), moved_ids)
    return len(moved_rows)


def _duplicate_groups(fps: np.ndarray) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, fp in enumerate(fps):
        if fp:
            groups.setdefault(fp, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def record_manifest(store: Store, man: Manifest, cohort: str) -> None:
    """Note which manifest (by content hash, not by name: names can carry PHI) fed which cohort."""
    digest = hashlib.sha256()
    if man.source is not None and Path(man.source).is_file():
        digest.update(Path(man.source).read_bytes())
    entry = {"cohort": cohort, "manifest_sha256": digest.hexdigest()[:16], "rows": len(man),
             "date": now_iso()}
    samples = store.h5["samples"]
    history = json.loads(str(samples.attrs.get(COHORTS_ATTR, "[]")))
    key = (cohort, entry["manifest_sha256"])
    history = [h for h in history if (h["cohort"], h["manifest_sha256"]) != key]
    samples.attrs[COHORTS_ATTR] = json.dumps([*history, entry])


def cohort_counts(store: Store) -> dict[str, int]:
    """Rows per cohort name ("" is the unnamed cohort)."""
    names, counts = np.unique(store.sample_strings("cohort").astype(str), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


def duplicate_rows(store: Store) -> int:
    """Rows whose file content another row also has (counted once per extra copy)."""
    fps = store.sample_strings("fingerprint").astype(str)
    fps = fps[fps != ""]
    return int(fps.size - np.unique(fps).size)
