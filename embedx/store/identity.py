"""Match a manifest's rows to a store's rows without merging two cohorts or counting one image twice.

Three cases the path-keyed sample id alone gets wrong, and what is done about each:

- **Another cohort, same paths** (`images/000000.png` in both): rows whose id is already in the store are
  checked by content fingerprint where their file's size or modification time changed, and in a fresh
  random sample of `CHECK_ROWS`. Mostly different files at stored paths mean another cohort: the encode is
  refused, naming the rows, and `--cohort NAME` keeps the second cohort apart (its ids include the name).
  A few different files are images replaced in place: their stale latents are dropped and re-encoded.
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

from embedx.data.identity import file_stats, fingerprints
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
    stats: np.ndarray  # per manifest row: "size:mtime_ns" now ("" where the file cannot be read)
    cohort: str
    n_moved: int = 0  # rows found in the store by content under another path
    duplicates: list[list[int]] = field(default_factory=list)  # groups of manifest rows with one content
    replaced: list[int] = field(default_factory=list)  # manifest rows whose image changed since encoding

    def warnings(self) -> list[str]:
        out = []
        if self.n_moved:
            out.append(f"{self.n_moved} row(s) are images already in the store under another path (a moved "
                       "folder?): they keep their latents and take the new path")
        if self.replaced:
            out.append(f"{len(self.replaced)} image(s) changed since they were encoded "
                       f"({_rows_text(self.replaced)}): their latents were dropped in every model of the "
                       "store and this encode redoes them; "
                       "re-encode the other models too")
        if self.duplicates:
            groups = self.duplicates
            shown = "; ".join(_rows_text(group) for group in groups[:MAX_NAMED])
            more = f" and {len(groups) - MAX_NAMED} more" if len(groups) > MAX_NAMED else ""
            out.append(f"{len(groups)} image(s) appear more than once in the manifest under different "
                       f"paths ({shown}{more}); each copy is a row of its own: remove unintended copies")
        return out


def _rows_text(group: list[int]) -> str:
    shown = ", ".join(f"row {r + 1}" for r in group[:MAX_NAMED])
    return shown + (f" (+{len(group) - MAX_NAMED} more)" if len(group) > MAX_NAMED else "")


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
        f"already in the store{where} but hold a different image ({named}). This looks like another cohort: "
        "keep the cohorts apart with `--cohort NAME` (its rows get their own ids), or encode it into a new "
        "store. If it is the same cohort with its images exported again, encode into a new store."
    )


def plan_identity(store: Store, man: Manifest, cohort: str = "", show_progress: bool = True) -> IdentityPlan:
    """Check the manifest against the store and rename moved rows; returns the ids and fingerprints to add.

    Rows already in the store are checked by file size and modification time (a stat, cheap), and every
    row whose stat changed, plus a fresh random sample of `CHECK_ROWS`, by fingerprint. Most checked rows
    different: another cohort, refused. A few: images replaced in place; their latents are dropped in
    every model (`replaced`), so that this encode redoes them instead of keeping the old image's vectors.
    """
    ids = store.ids_for(man, cohort).astype(object)
    rows = store.rows_of(ids, missing_ok=True)
    stored_fp = store.sample_strings("fingerprint")
    stored_stat = store.sample_strings("filestat")
    fps = np.full(len(ids), "", dtype=object)
    stats = np.asarray(file_stats(_paths(man, np.arange(len(ids)))), dtype=object)

    colliding = np.flatnonzero(rows >= 0)
    fps[colliding] = stored_fp[rows[colliding]]
    changed = colliding[(stats[colliding] != stored_stat[rows[colliding]]) | (fps[colliding] == "")]
    known = colliding[fps[colliding] != ""]
    sample = np.random.default_rng().choice(known, size=min(CHECK_ROWS, known.size), replace=False)
    check = np.union1d(changed, sample).astype(np.int64)
    replaced: list[int] = []
    if check.size:
        now = np.asarray(_fingerprint_rows(man, check, show_progress), dtype=object)
        compared = [(int(r), fp) for r, fp in zip(check, now, strict=True) if fp and fps[r]]
        differ = [r for r, fp in compared if fp != fps[r]]
        mostly = len(differ) >= 0.5 * len(compared) and (len(differ) >= 3 or len(differ) == len(compared))
        if differ and mostly:
            _refuse_other_cohort(store, man, differ, len(compared), cohort)
        replaced = differ
        readable = now != ""
        fps[check[readable]] = now[readable]

    new = np.flatnonzero(rows < 0)
    if new.size:
        fps[new] = _fingerprint_rows(man, new, show_progress)
    plan = IdentityPlan(ids=ids, fingerprints=fps, stats=stats, cohort=cohort)
    if replaced:
        store.invalidate_rows(rows[replaced])
        plan.replaced = [int(r) for r in replaced]
    plan.n_moved = _adopt_moved_rows(store, plan, rows, new)
    plan.duplicates = _duplicate_groups(fps)
    return plan


def _adopt_moved_rows(store: Store, plan: IdentityPlan, rows: np.ndarray, new: np.ndarray) -> int:
    """Stored rows this manifest does not claim by id, whose content a new row has, take that row's id.

    Several stored rows with one content (copies) pair one-to-one with new rows of that content.
    """
    if not new.size or store.n == 0:
        return 0
    stored_fp = store.sample_strings("fingerprint")
    stored_cohort = store.sample_strings("cohort")
    claimed = np.zeros(store.n, dtype=bool)
    claimed[rows[rows >= 0]] = True
    free = np.flatnonzero(~claimed & (stored_fp != "") & (stored_cohort == plan.cohort))
    by_content: dict[str, list[int]] = {}
    for r in free:
        by_content.setdefault(stored_fp[r], []).append(int(r))
    moved_rows, moved_ids = [], []
    for i in new:
        waiting = by_content.get(plan.fingerprints[i]) if plan.fingerprints[i] else None
        if waiting:
            moved_rows.append(waiting.pop(0))
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
