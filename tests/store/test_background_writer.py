"""The encode writer thread: batches land in order, write errors surface in the caller, nothing is lost."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

from embedx.data.dataset import make_loader
from embedx.store.encode import BackgroundWriter, make_thumbnails, thumbnail_tensor


def _batch(i: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, None]:
    rows = np.arange(4 * i, 4 * i + 4)
    return rows, torch.full((4, 3), float(i)), torch.zeros(4, 64, 64, dtype=torch.uint8), None


def test_batches_are_written_in_order_on_another_thread():
    seen: list[tuple[list[int], float, str]] = []

    def sink(rows, z, thumbs, xt):
        assert isinstance(z, np.ndarray) and isinstance(thumbs, np.ndarray) and xt is None
        seen.append((rows.tolist(), float(z[0, 0]), threading.current_thread().name))

    writer = BackgroundWriter(sink, depth=2)
    for i in range(25):
        writer.put(*_batch(i))
    writer.close()
    assert [s[1] for s in seen] == [float(i) for i in range(25)]
    assert [r for s in seen for r in s[0]] == list(range(100))
    assert {s[2] for s in seen} == {"embedx-encode-writer"}


def test_a_write_error_is_raised_in_the_caller_and_never_deadlocks():
    calls = []

    def sink(rows, z, thumbs, xt):
        calls.append(int(rows[0]))
        if len(calls) == 2:
            raise OSError("disk full: store.h5")

    writer = BackgroundWriter(sink, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):  # a dead writer must not leave `put` blocked on a full queue
            writer.put(*_batch(i))
        writer.close()
    writer.close(raise_errors=False)
    assert calls == [0, 4]  # nothing was written after the failure


def test_queued_batches_are_still_written_when_the_caller_stops_early():
    written = []
    gate = threading.Event()

    def sink(rows, z, thumbs, xt):
        gate.wait(5)
        written.append(int(rows[0]))

    writer = BackgroundWriter(sink, depth=3)
    for i in range(3):
        writer.put(*_batch(i))
    gate.set()
    writer.close(raise_errors=False)
    assert written == [0, 4, 8]


def test_thumbnail_tensor_matches_the_host_thumbnails_and_stays_on_device():
    images = torch.rand(3, 2, 128, 128) * 2 - 1
    t = thumbnail_tensor(images)
    assert t.dtype == torch.uint8 and t.shape == (3, 64, 64) and t.device == images.device
    np.testing.assert_array_equal(t.numpy(), make_thumbnails(images))


class _NiceProbe(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        return {"row": i, "image": torch.tensor([float(os.nice(0))])}


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no os.nice on this platform")
def test_loader_workers_can_be_niced_so_a_cpu_model_keeps_its_cores():
    base = os.nice(0)
    niced = next(iter(make_loader(_NiceProbe(), 2, False, workers=1, worker_nice=7)))
    plain = next(iter(make_loader(_NiceProbe(), 2, False, workers=1)))
    assert niced["image"].flatten().tolist() == [min(base + 7, 19)] * 2
    assert plain["image"].flatten().tolist() == [base] * 2
    assert os.nice(0) == base  # the main process keeps its priority
