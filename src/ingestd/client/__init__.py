"""The ingestd client: typed HTTP calls, and resumable parallel uploads over the block API."""

from __future__ import annotations

from ingestd.client.blocks import (
    DEFAULT_BLOCK_SIZE,
    BlockPlan,
    content_digest,
    hash_file,
    parse_content_digest,
    read_block,
)
from ingestd.client.errors import ClientError, EmptyFile, FileChanged, LocalFileError
from ingestd.client.http import (
    BlockReceipt,
    IngestdClient,
    JSONObject,
    UploadSession,
    UploadStatus,
)
from ingestd.client.state import FileKey, SavedUpload, UploadStateStore, default_state_dir
from ingestd.client.upload import (
    Phase,
    ProgressCallback,
    RetryPolicy,
    Uploader,
    UploadOptions,
    UploadProgress,
    UploadResult,
)
from ingestd.client.watch import TERMINAL_STATUSES, asset_error, is_terminal, wait_for_assets

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "TERMINAL_STATUSES",
    "BlockPlan",
    "BlockReceipt",
    "ClientError",
    "EmptyFile",
    "FileChanged",
    "FileKey",
    "IngestdClient",
    "JSONObject",
    "LocalFileError",
    "Phase",
    "ProgressCallback",
    "RetryPolicy",
    "SavedUpload",
    "UploadOptions",
    "UploadProgress",
    "UploadResult",
    "UploadSession",
    "UploadStateStore",
    "UploadStatus",
    "Uploader",
    "asset_error",
    "content_digest",
    "default_state_dir",
    "hash_file",
    "is_terminal",
    "parse_content_digest",
    "read_block",
    "wait_for_assets",
]
