"""EBU R128 loudness (integrated, range, true peak) with ffmpeg's ebur128 filter."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ingestd.errors import TranscodeFailed
from ingestd.media.process import ProgressCallback, input_args, run_ffmpeg_log
from ingestd.media.toolchain import Toolchain

__all__ = ["Loudness", "measure_loudness", "parse_ebur128_summary"]

_VALUE = re.compile(r"^\s*(I|LRA|Threshold|Peak):\s*(-?inf|-?nan|-?[\d.]+)\s", re.IGNORECASE)


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float
    loudness_range_lu: float
    true_peak_dbtp: float
    threshold_lufs: float  # the integrated measurement's relative gate

    def to_dict(self) -> dict[str, float | None]:
        """JSON-able; silence gives -inf, stored as None."""
        return {k: (v if math.isfinite(v) else None) for k, v in asdict(self).items()}


def parse_ebur128_summary(lines: list[str]) -> Loudness:
    """Reads the "Summary:" block the ebur128 filter logs when it closes."""
    try:
        start = max(i for i, line in enumerate(lines) if line.rstrip().endswith("Summary:"))
    except ValueError as exc:
        raise TranscodeFailed("ebur128 printed no summary") from exc
    section = ""
    values: dict[str, float] = {}
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if stripped.endswith(":") and not _VALUE.match(line):
            section = stripped[:-1]
            continue
        match = _VALUE.match(line)
        if match:
            key = f"{section}/{match[1]}"
            values.setdefault(key, float(match[2]))
    try:
        return Loudness(
            integrated_lufs=values["Integrated loudness/I"],
            loudness_range_lu=values["Loudness range/LRA"],
            true_peak_dbtp=values["True peak/Peak"],
            threshold_lufs=values["Integrated loudness/Threshold"],
        )
    except KeyError as exc:
        raise TranscodeFailed(f"ebur128 summary lacks {exc.args[0]}") from exc


async def measure_loudness(
    tc: Toolchain,
    path: Path,
    *,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> Loudness:
    """Integrated loudness (LUFS), loudness range (LU) and true peak (dBTP) of the first
    audio stream, per EBU R128 / ITU-R BS.1770 (4x oversampled true peak)."""
    lines = await run_ffmpeg_log(
        tc,
        [
            *("-v", "info", *input_args(path), "-map", "0:a:0"),
            # framelog=verbose keeps the ten-per-second frame lines out of the info log.
            *("-af", "ebur128=peak=true:framelog=verbose", "-f", "null", "-"),
        ],
        duration_s=duration_s,
        on_progress=on_progress,
        timeout_s=timeout_s,
        logger=logger,
        keep_lines=40,
    )
    return parse_ebur128_summary(lines)
