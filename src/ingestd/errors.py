"""The errors ingestd raises.

Domain errors carry a machine-readable ``code`` and no HTTP status; ``api/`` maps them.
The docstring of each class is its default message.

    IngestdError
    ├── ConfigError
    ├── NotFound
    ├── Unauthorized
    ├── InvalidRequest
    │   ├── InvalidBlock
    │   ├── ChecksumMismatch
    │   └── TooLarge
    ├── Conflict
    │   ├── UploadIncomplete
    │   ├── SizeMismatch
    │   └── InvalidState
    ├── Gone
    ├── LeaseLost
    ├── MediaError
    │   ├── SourceRejected        (the input is not acceptable: never retried)
    │   ├── ToolNotFound
    │   ├── TranscodeFailed       (a tool exited non-zero: retried)
    │   └── StepTimeout
    ├── StorageError
    └── BrokerError           (the message broker is away: messages wait in the outbox)
"""

from __future__ import annotations

from typing import Any


class IngestdError(Exception):
    """Something went wrong in ingestd."""

    code = "internal_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)


class ConfigError(IngestdError):
    """The configuration is not valid."""

    code = "config_error"


class NotFound(IngestdError):
    """The resource does not exist."""

    code = "not_found"


class Unauthorized(IngestdError):
    """A valid API key is required."""

    code = "unauthorized"


class Forbidden(IngestdError):
    """The credentials do not allow this request."""

    code = "forbidden"


class InvalidRequest(IngestdError):
    """The request is not valid."""

    code = "invalid_request"


class UnsupportedMediaType(InvalidRequest):
    """The request body has a content type this endpoint does not take."""

    code = "unsupported_media_type"


class UnsupportedVersion(InvalidRequest):
    """The protocol version the client asked for is not supported."""

    code = "unsupported_version"


class InvalidBlock(InvalidRequest):
    """The block index is out of range."""

    code = "invalid_block"


class ChecksumMismatch(InvalidRequest):
    """The data does not match its checksum."""

    code = "checksum_mismatch"


class ChunkChecksumMismatch(ChecksumMismatch):
    """A tus chunk does not match its Upload-Checksum; it was discarded."""

    code = "checksum_mismatch"


class TooLarge(InvalidRequest):
    """The data is larger than allowed."""

    code = "too_large"


class Conflict(IngestdError):
    """The request conflicts with the current state."""

    code = "conflict"


class UploadIncomplete(Conflict):
    """Some blocks have not been uploaded."""

    code = "upload_incomplete"


class SizeMismatch(Conflict):
    """The received size differs from the declared size."""

    code = "size_mismatch"


class OffsetMismatch(Conflict):
    """The client's offset differs from the bytes the server holds."""

    code = "offset_mismatch"


class Locked(Conflict):
    """Another request is writing to this upload."""

    code = "upload_locked"


class InvalidState(Conflict):
    """The resource is not in a state that allows this."""

    code = "invalid_state"


class Gone(IngestdError):
    """The resource has expired."""

    code = "gone"


class LeaseLost(IngestdError):
    """The work order's lease is no longer held by this worker."""

    code = "lease_lost"


class MediaError(IngestdError):
    """A media operation failed."""

    code = "media_error"


class SourceRejected(MediaError):
    """The source file is not acceptable."""

    code = "source_rejected"


class ToolNotFound(MediaError):
    """A required media tool (ffmpeg, ffprobe) was not found."""

    code = "tool_not_found"


class TranscodeFailed(MediaError):
    """A media tool exited with an error."""

    code = "transcode_failed"


class StepTimeout(MediaError):
    """A processing step ran longer than its time limit."""

    code = "step_timeout"


class StorageError(IngestdError):
    """The object store failed."""

    code = "storage_error"


class BrokerError(IngestdError):
    """The message broker is unavailable."""

    code = "broker_unavailable"
