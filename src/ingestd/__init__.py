"""ingestd: resumable ingestion, validation and processing of media masters and scientific files."""

from __future__ import annotations

__version__ = "0.1.0"
