"""Publishing an asset's outputs to targets: a directory, an S3 bucket, an FTP server."""

from __future__ import annotations

from ingestd.publish.ftp import FtpTarget
from ingestd.publish.service import (
    STEP_FAMILY,
    ObjectResult,
    PublicationService,
    PublishReport,
    TargetView,
    default_policy,
    publish_step,
)
from ingestd.publish.steps import PublishSteps, auto_targets, publish_graph_steps, with_publish
from ingestd.publish.targets import (
    DirectoryTarget,
    PathEscapes,
    PublicationTarget,
    PublishFailed,
    RemoteObject,
    S3Target,
    Sent,
    TargetPolicy,
    mask_secrets,
    open_target,
    validate_config,
)

__all__ = [
    "STEP_FAMILY",
    "DirectoryTarget",
    "FtpTarget",
    "ObjectResult",
    "PathEscapes",
    "PublicationService",
    "PublicationTarget",
    "PublishFailed",
    "PublishReport",
    "PublishSteps",
    "RemoteObject",
    "S3Target",
    "Sent",
    "TargetPolicy",
    "TargetView",
    "auto_targets",
    "default_policy",
    "mask_secrets",
    "open_target",
    "publish_graph_steps",
    "publish_step",
    "validate_config",
    "with_publish",
]
