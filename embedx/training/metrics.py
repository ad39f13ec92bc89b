"""Loss logs of a run: a tidy `metrics.csv` (samples, step, split, metric, value) and TensorBoard.

Tidy rows keep one file valid whatever the model reports (the VAE's KL and Hessian terms, the CNN's
accuracy, the DAE's z_sem gap). On resume, rows and events after the checkpoint's step are dropped first, so
the log of a resumed run reads exactly like that of an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

HEADER = ["samples", "step", "split", "metric", "value"]


def read_metrics(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path)


class MetricsLog:
    """Main-process writer; other processes get a disabled one (every call is a no-op)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.csv"
        self._writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            table = pd.read_csv(self.path)
            table[table["step"] <= resume_step].to_csv(self.path, index=False)
        elif not self.path.exists() or resume_step is None:
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(HEADER)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 (kept open for the whole run)
        self._csv = csv.writer(self._file)
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge)

    def log(self, step: int, samples: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            value = float(value)
            self._csv.writerow([samples, step, split, name, repr(value) if math.isfinite(value) else value])
            self._writer.add_scalar(f"{split}/{name}", value, global_step=samples)
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._writer.close()
