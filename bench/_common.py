"""What the bench scripts share: finding ingestd, temporary roots, medians, clean exits."""

from __future__ import annotations

import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType


def find_ingestd(explicit: Path | None) -> Path:
    """The ingestd executable: as given, else beside this Python, else on PATH."""
    if explicit is not None:
        return explicit
    beside = Path(sys.executable).with_name("ingestd")
    if beside.exists():
        return beside
    found = shutil.which("ingestd")
    if found is None:
        raise SystemExit("cannot find the ingestd executable; pass --ingestd")
    return Path(found)


@contextmanager
def temporary_root(prefix: str, parent: Path | None) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so finally blocks stop servers and remove files."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def load_text(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)
