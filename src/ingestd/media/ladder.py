"""Adaptive bitrate ladders: which renditions to encode for a video source. Pure, no I/O.

A rung's nominal height names a 16:9 box (``1080p`` is 1920x1080), turned to the source's
orientation: a portrait source is fitted into 1080x1920. The source is scaled to fit the box
with its display aspect ratio kept, so 1080p of a 1920x804 scope film is 1920x804, of a 4:3
1440x1080 source 1440x1080 and of a 9:16 phone clip 1080x1920. For 16:9 and 9:16 pictures
this is the same as applying the rung's height to the short side. Rungs keep their names
("1080p") whatever the orientation.

Never upscale: a rung whose box the source does not fill is dropped, except that a source
within ``SNAP_SLACK`` of a box (a 1916x1076 crop, 1279x719) keeps that rung at its own size.
A source smaller than every rung gets one rung at its own (even) size.

Keyframes: every rung has a keyframe every ``keyframe_interval_s`` seconds, the same on all
rungs, so segments cut on keyframes line up across the ladder; a segment holds a whole
number of GOPs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PROFILE",
    "SNAP_SLACK",
    "PlannedRung",
    "Profile",
    "Rung",
    "display_size",
    "plan_ladder",
    "profile_from_dict",
]

# A rung is kept (at the source's own size) when the source is at most this much smaller than
# its box: cropped or odd-sized masters would otherwise lose their top rung to a few pixels.
SNAP_SLACK = 1.05
# Capping the frame rate by dropping every n-th frame keeps motion even and keyframes exact;
# it is used unless the result would fall below this fraction of the cap (35 fps → 17.5).
_MIN_DIVIDED_FRACTION = 2 / 3
_RUNG_KEYS = {"name", "height", "video_bitrate", "max_fps"}
_PROFILE_KEYS = {"name", "rungs", "audio_bitrate", "gop_s", "segment_s", "max_fps"}


@dataclass(frozen=True)
class Rung:
    """One rendition of a profile: a 16:9 box ``height`` pixels high, its bitrate in bit/s."""

    name: str
    height: int
    video_bitrate: int
    max_fps: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a rung needs a name")
        if self.height < 2:
            raise ValueError(f"rung {self.name!r}: height must be at least 2, not {self.height}")
        if self.video_bitrate <= 0:
            raise ValueError(f"rung {self.name!r}: video_bitrate must be positive")
        if self.max_fps is not None and self.max_fps <= 0:
            raise ValueError(f"rung {self.name!r}: max_fps must be positive")

    @property
    def box(self) -> tuple[int, int]:
        """The nominal landscape box (width, height): 1080 → 1920x1080."""
        return _even(self.height * 16 / 9), self.height

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "height": self.height,
            "video_bitrate": self.video_bitrate,
            "max_fps": self.max_fps,
        }


@dataclass(frozen=True)
class Profile:
    """A ladder: rungs (sorted tallest first), audio bitrate, GOP and segment durations."""

    name: str
    rungs: tuple[Rung, ...]
    audio_bitrate: int = 128_000
    gop_s: float = 2.0
    segment_s: float = 6.0
    max_fps: float = 60.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a profile needs a name")
        if not self.rungs:
            raise ValueError(f"profile {self.name!r} has no rungs")
        names = [rung.name for rung in self.rungs]
        if len(set(names)) != len(names):
            raise ValueError(f"profile {self.name!r}: rung names must be unique, got {names}")
        heights = [rung.height for rung in self.rungs]
        if len(set(heights)) != len(heights):
            raise ValueError(f"profile {self.name!r}: two rungs have the same height")
        if self.audio_bitrate <= 0:
            raise ValueError(f"profile {self.name!r}: audio_bitrate must be positive")
        if self.max_fps <= 0:
            raise ValueError(f"profile {self.name!r}: max_fps must be positive")
        if self.gop_s <= 0 or self.segment_s <= 0:
            raise ValueError(f"profile {self.name!r}: gop_s and segment_s must be positive")
        gops = self.segment_s / self.gop_s
        if gops < 1 - 1e-9 or abs(gops - round(gops)) > 1e-9:
            raise ValueError(
                f"profile {self.name!r}: segment_s ({self.segment_s:g}) must be a whole multiple "
                f"of gop_s ({self.gop_s:g}) so that every segment starts on a keyframe"
            )
        ordered = tuple(sorted(self.rungs, key=lambda rung: rung.height, reverse=True))
        object.__setattr__(self, "rungs", ordered)

    @property
    def gops_per_segment(self) -> int:
        return round(self.segment_s / self.gop_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rungs": [rung.to_dict() for rung in self.rungs],
            "audio_bitrate": self.audio_bitrate,
            "gop_s": self.gop_s,
            "segment_s": self.segment_s,
            "max_fps": self.max_fps,
        }


# After Apple's HLS authoring specification (16:9 H.264 ladder); the lower rungs at 30 fps.
DEFAULT_PROFILE = Profile(
    name="default",
    rungs=(
        Rung("2160p", 2160, 14_000_000),
        Rung("1440p", 1440, 8_000_000),
        Rung("1080p", 1080, 6_000_000),
        Rung("720p", 720, 3_000_000),
        Rung("540p", 540, 2_000_000),
        Rung("360p", 360, 730_000, max_fps=30.0),
        Rung("234p", 234, 145_000, max_fps=30.0),
    ),
)


@dataclass(frozen=True)
class PlannedRung:
    """A rendition to encode. ``fps_divisor`` n means "every n-th source frame" (1 keeps the
    source rate); ``None`` means the rate was resampled to ``fps`` and keyframes should be
    forced by time (every ``keyframe_interval_s``), not by frame count."""

    name: str
    width: int
    height: int
    video_bitrate: int
    fps: float
    fps_divisor: int | None
    gop_frames: int
    keyframe_interval_s: float
    segment_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "video_bitrate": self.video_bitrate,
            "fps": self.fps,
            "fps_divisor": self.fps_divisor,
            "gop_frames": self.gop_frames,
            "keyframe_interval_s": self.keyframe_interval_s,
            "segment_s": self.segment_s,
        }


def _even(value: float) -> int:
    """Nearest even integer, at least 2 (encoders want even sizes for 4:2:0)."""
    return max(2, 2 * round(value / 2))


def _even_down(value: int) -> int:
    return max(2, value - value % 2)


def display_size(
    width: int, height: int, sar: Fraction | None = None, rotation: int = 0
) -> tuple[int, int]:
    """The size a player shows: ``width`` stretched by the sample aspect ratio, then turned
    by ``rotation`` (degrees; 90 and 270 swap the sides). A missing or zero SAR counts as 1:1.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"picture size must be positive, got {width}x{height}")
    if sar is not None and sar > 0 and sar != 1:
        width = max(1, round(width * sar))
    if rotation % 180 == 90:
        return height, width
    if rotation % 90 != 0:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    return width, height


def _cap_fps(fps: float, cap: float) -> tuple[float, int | None]:
    if fps <= cap * (1 + 1e-6):
        return fps, 1
    divisor = math.ceil(fps / cap - 1e-6)
    divided = fps / divisor
    if divided >= cap * _MIN_DIVIDED_FRACTION:
        return divided, divisor
    return cap, None


def plan_ladder(
    profile: Profile, *, display_width: int, display_height: int, fps: float
) -> list[PlannedRung]:
    """The renditions of ``profile`` for a source shown at ``display_width``x``display_height``
    (after sample aspect ratio and rotation, see :func:`display_size`) at ``fps``."""
    if display_width <= 0 or display_height <= 0:
        raise ValueError(f"display size must be positive, got {display_width}x{display_height}")
    if not fps > 0 or math.isinf(fps):
        raise ValueError(f"frame rate must be positive, got {fps}")
    portrait = display_height > display_width
    source_gop = max(1, round(fps * profile.gop_s))
    keyframe_interval = source_gop / fps
    planned: list[PlannedRung] = []
    seen: set[tuple[int, int]] = set()

    def add(name: str, width: int, height: int, rung: Rung) -> None:
        if (width, height) in seen:
            return
        seen.add((width, height))
        cap = min(profile.max_fps, rung.max_fps or math.inf)
        rung_fps, divisor = _cap_fps(fps, cap)
        if divisor is not None and source_gop % divisor == 0:
            gop_frames = source_gop // divisor
        else:
            gop_frames = max(1, round(rung_fps * keyframe_interval))
        planned.append(
            PlannedRung(
                name=name,
                width=width,
                height=height,
                video_bitrate=rung.video_bitrate,
                fps=rung_fps,
                fps_divisor=divisor,
                gop_frames=gop_frames,
                keyframe_interval_s=keyframe_interval,
                segment_s=keyframe_interval * profile.gops_per_segment,
            )
        )

    for rung in profile.rungs:
        box_w, box_h = rung.box
        if portrait:
            box_w, box_h = box_h, box_w
        scale = min(box_w / display_width, box_h / display_height)
        if scale > SNAP_SLACK:
            continue  # the source is smaller than this rung: never upscale
        width = min(_even(display_width * scale), _even_down(display_width))
        height = min(_even(display_height * scale), _even_down(display_height))
        add(rung.name, width, height, rung)
    if not planned:
        smallest = profile.rungs[-1]
        width, height = _even_down(display_width), _even_down(display_height)
        add(f"{min(width, height)}p", width, height, smallest)
    return planned


def _number(data: Mapping[str, Any], key: str, where: str, *, integer: bool = False) -> Any:
    value = data[key]
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{where}: {key} must be {kind}, got {value!r}")
    return value


def _check_keys(data: Any, allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be an object, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")


def _rung_from_dict(data: Any, where: str) -> Rung:
    _check_keys(data, _RUNG_KEYS, {"name", "height", "video_bitrate"}, where)
    if not isinstance(data["name"], str):
        raise ValueError(f"{where}: name must be a string")
    max_fps = data.get("max_fps")
    return Rung(
        name=data["name"],
        height=_number(data, "height", where, integer=True),
        video_bitrate=_number(data, "video_bitrate", where, integer=True),
        max_fps=None if max_fps is None else float(_number(data, "max_fps", where)),
    )


def profile_from_dict(data: Any) -> Profile:
    """Builds and validates a profile from JSON-like data (the shape of ``Profile.to_dict``).

    Raises ``ValueError`` naming the offending field.
    """
    _check_keys(data, _PROFILE_KEYS, {"name", "rungs"}, "profile")
    name = data["name"]
    if not isinstance(name, str):
        raise ValueError("profile: name must be a string")
    where = f"profile {name!r}"
    rungs_data = data["rungs"]
    if isinstance(rungs_data, str | bytes) or not isinstance(rungs_data, Sequence):
        raise ValueError(f"{where}: rungs must be a list")
    rungs = tuple(_rung_from_dict(item, f"{where} rung {i}") for i, item in enumerate(rungs_data))
    options: dict[str, Any] = {}
    if "audio_bitrate" in data:
        options["audio_bitrate"] = _number(data, "audio_bitrate", where, integer=True)
    for key in ("gop_s", "segment_s", "max_fps"):
        if key in data:
            options[key] = float(_number(data, key, where))
    return Profile(name=name, rungs=rungs, **options)


def load_profiles(path: Path | None) -> dict[str, Profile]:
    """The profiles an operator defined in a JSON file (``{"profiles": [...]}`` or a list),
    with ``default`` (DEFAULT_PROFILE) unless the file redefines it. Raises ``ValueError``."""
    profiles = {DEFAULT_PROFILE.name: DEFAULT_PROFILE}
    if path is None:
        return profiles
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read profiles from {path}: {exc}") from exc
    items = data.get("profiles") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of profiles or {{'profiles': [...]}}")
    for item in items:
        profile = profile_from_dict(item)
        profiles[profile.name] = profile
    return profiles


def profile_key(profile: Profile) -> str:
    """A short hash of a profile's definition: a changed profile re-runs the ladder."""
    text = json.dumps(profile.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
