"""Object stores: where staged uploads, private masters and renditions live."""

from __future__ import annotations

from ingestd.storage.base import IncompleteWrite, ObjectStore, StagingStore
from ingestd.storage.local import LocalStore

__all__ = ["IncompleteWrite", "LocalStore", "ObjectStore", "StagingStore"]
