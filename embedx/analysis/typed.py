"""`JsonResult`: the base of embedx's typed analysis results (probe, fairness, clusters, controls).

A result is a frozen dataclass, so producers and readers agree on fields and types, and it reads as a
read-only `Mapping` over its JSON form, so code that handles results loaded from a store (plain dicts) and
fresh ones is the same code. `to_dict()` gives the plain JSON document that the store, `--json` files and
`report.json` hold; `from_dict()` rebuilds a result from one (unknown keys ignored, absent ones defaulted).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

__all__ = ["JsonResult", "to_jsonable"]

T = TypeVar("T", bound="JsonResult")


class JsonResult(Mapping[str, Any]):
    """Mixin for frozen dataclasses: JSON form, mapping access, `replace`, `from_dict`."""

    # fields left out of the JSON form when None (optional annotations of a result)
    omit_if_none: ClassVar[tuple[str, ...]] = ()
    # fields stored as tuples that JSON returns as lists
    tuple_fields: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        for name in self.omit_if_none:
            if out.get(name) is None:
                out.pop(name, None)
        return to_jsonable(out)

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        if isinstance(data, cls):
            return data
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in data.items() if k in known}
        for name in cls.tuple_fields:
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def _json(self) -> dict[str, Any]:
        cached = self.__dict__.get("_json_cache")
        if cached is None:
            cached = self.to_dict()
            object.__setattr__(self, "_json_cache", cached)
        return cached

    def __getitem__(self, key: str) -> Any:
        return self._json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json())

    def __len__(self) -> int:
        return len(self._json())

    __hash__ = None  # type: ignore[assignment]


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy / pandas values into JSON types; NaN and infinities become None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return None if math.isnan(value) or math.isinf(value) else value
    if obj is None or isinstance(obj, str):
        return obj
    if obj is pd.NA or obj is pd.NaT:
        return None
    return str(obj)
