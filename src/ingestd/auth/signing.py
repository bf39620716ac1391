"""Signed, expiring URLs for an asset's outputs.

A signature covers a scope (``renditions/<asset_id>/``) and an expiry, and sits in the
path, not the query: ``/o/<expires>/<sig>/renditions/<asset_id>/hls/master.m3u8``.
Relative references inside playlists and manifests then resolve to URLs that carry the
same signature, so players need no per-segment signing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def scope_of(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != "renditions" or not parts[1]:
        return None
    return f"renditions/{parts[1]}/"


class UrlSigner:
    def __init__(self, secret: bytes, *, ttl_s: int = 6 * 3600) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def _sig(self, scope: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{expires}:{scope}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode().rstrip("=")

    def sign(self, key: str, *, now: float | None = None) -> str:
        """The path (from ``/o/``) that serves ``key`` until the expiry."""
        scope = scope_of(key)
        if scope is None:
            raise ValueError(f"{key!r} is not a rendition key")
        expires = int((now if now is not None else time.time()) + self.ttl_s)
        # round up to the hour: URLs stay stable (and cacheable) for a while
        expires += -expires % 3600
        return f"/o/{expires}/{self._sig(scope, expires)}/{key}"

    def verify(self, expires: int, sig: str, key: str, *, now: float | None = None) -> bool:
        scope = scope_of(key)
        if scope is None or expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(sig, self._sig(scope, expires))
