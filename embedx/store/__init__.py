"""The HDF5 store (layout in docs/store.md): `Store` to read and write it, `encode`, `project`."""

from embedx.store.h5store import SCHEMA_VERSION, Store, write_store_from_arrays

__all__ = ["SCHEMA_VERSION", "Store", "write_store_from_arrays"]
