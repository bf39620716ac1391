"""Local state of unfinished uploads, so an interrupted upload resumes instead of restarting.

One small JSON file per upload, named after a hash of (server URL, absolute path, size,
mtime). A file that was modified gets a new key, so its stale state is never used. The
block hashes are kept too, so a resumed upload does not hash the file again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_VERSION = 1


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$INGESTD_CLIENT_STATE_DIR``, else ``$XDG_STATE_HOME/ingestd/uploads``,
    else ``~/.local/state/ingestd/uploads``."""
    explicit = environ.get("INGESTD_CLIENT_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "ingestd" / "uploads"


@dataclass(frozen=True)
class FileKey:
    """What identifies "the same upload of the same file" across runs."""

    server: str
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def for_file(cls, server: str, path: Path) -> FileKey:
        resolved = path.resolve()
        stat = resolved.stat()
        return cls(server.rstrip("/"), str(resolved), stat.st_size, stat.st_mtime_ns)

    @property
    def digest(self) -> str:
        text = "\n".join([self.server, self.path, str(self.size), str(self.mtime_ns)])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


@dataclass(frozen=True)
class SavedUpload:
    """An upload session the server opened for a file, as last known locally."""

    key: FileKey
    upload_id: str
    asset_id: str
    block_size: int
    sha256: str
    block_hashes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["block_hashes"] = list(self.block_hashes)
        body["version"] = _VERSION
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SavedUpload:
        return cls(
            key=FileKey(**body["key"]),
            upload_id=str(body["upload_id"]),
            asset_id=str(body["asset_id"]),
            block_size=int(body["block_size"]),
            sha256=str(body["sha256"]),
            block_hashes=tuple(str(h) for h in body["block_hashes"]),
        )


class UploadStateStore:
    """Saved uploads under one directory. Writes are atomic (write then rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, key: FileKey) -> Path:
        return self.directory / f"{key.digest}.json"

    def load(self, key: FileKey) -> SavedUpload | None:
        """The saved upload for ``key``; None if there is none or it cannot be read."""
        try:
            body = json.loads(self.path_for(key).read_text(encoding="utf-8"))
            if body.get("version") != _VERSION:
                return None
            saved = SavedUpload.from_json(body)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # A corrupt or foreign file: starting a new upload is always safe.
            return None
        return saved if saved.key == key else None

    def save(self, saved: SavedUpload) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path_for(saved.key)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(saved.to_json()), encoding="utf-8")
        os.replace(temporary, target)

    def remove(self, key: FileKey) -> None:
        self.path_for(key).unlink(missing_ok=True)
