"""The errors the ingestd client raises.

IngestdError                (ingestd.errors)
├── ClientError             the server answered with an error, or could not be reached
└── LocalFileError          the file to upload cannot be uploaded as it is
    ├── EmptyFile
    └── FileChanged         the file changed while it was being uploaded
"""

from __future__ import annotations

from typing import Any

from ingestd.errors import IngestdError

#: Codes the client itself gives a ``ClientError`` when there is no server answer to quote.
NETWORK_ERROR = "network_error"
BAD_RESPONSE = "bad_response"

# 408 and 429 mean "try again later"; every other 4xx means the request itself is wrong.
_RETRYABLE_4XX = frozenset({408, 429})


class ClientError(IngestdError):
    """The server rejected the request."""

    code = "client_error"

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.details: dict[str, Any] = dict(details or {})

    @property
    def retryable(self) -> bool:
        """True for network failures, 5xx, 408 and 429: the same request may succeed later."""
        if self.status is None:
            return self.code == NETWORK_ERROR
        return self.status >= 500 or self.status in _RETRYABLE_4XX

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"

    def __repr__(self) -> str:
        return (
            f"ClientError(code={self.code!r}, message={self.message!r}, "
            f"status={self.status!r}, details={self.details!r})"
        )


class LocalFileError(IngestdError):
    """The file cannot be uploaded."""

    code = "local_file_error"


class EmptyFile(LocalFileError):
    """The file is empty; there is nothing to upload."""

    code = "empty_file"


class FileChanged(LocalFileError):
    """The file changed while it was being uploaded; run the upload again."""

    code = "file_changed"
