"""Media tools: ffmpeg/ffprobe wrappers for sniffing, probing, validating, measuring and
packaging audio. Paths and options in, results out; no database, settings or global state.
"""

from __future__ import annotations

from ingestd.media.archive import LosslessProof, archive_flac, pcm_md5
from ingestd.media.audio import (
    DEFAULT_AUDIO_LADDER,
    AudioRung,
    PackagedRendition,
    PackageResult,
    package_audio,
)
from ingestd.media.loudness import Loudness, measure_loudness
from ingestd.media.probe import AudioStreamInfo, ProbeResult, probe
from ingestd.media.process import (
    Progress,
    ProgressCallback,
    input_args,
    run_ffmpeg,
    run_ffprobe_json,
)
from ingestd.media.sniff import Sniffed, sniff
from ingestd.media.toolchain import Toolchain
from ingestd.media.validate import validate_audio
from ingestd.media.waveform import Waveform, waveform

__all__ = [
    "DEFAULT_AUDIO_LADDER",
    "AudioRung",
    "AudioStreamInfo",
    "LosslessProof",
    "Loudness",
    "PackageResult",
    "PackagedRendition",
    "ProbeResult",
    "Progress",
    "ProgressCallback",
    "Sniffed",
    "Toolchain",
    "Waveform",
    "archive_flac",
    "input_args",
    "measure_loudness",
    "package_audio",
    "pcm_md5",
    "probe",
    "run_ffmpeg",
    "run_ffprobe_json",
    "sniff",
    "validate_audio",
    "waveform",
]
