"""Following assets until their processing ends, by polling ``GET /v1/assets/{id}``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ingestd.client.errors import ClientError
from ingestd.client.http import IngestdClient, JSONObject

#: Asset statuses after which nothing changes without a new request.
TERMINAL_STATUSES = frozenset({"ready", "failed"})

AssetCallback = Callable[[JSONObject], None]


def is_terminal(asset: JSONObject) -> bool:
    return asset.get("status") in TERMINAL_STATUSES


def asset_error(asset: JSONObject) -> str:
    """A one-line reason for a failed asset: its error, else the first failed step's."""
    error = asset.get("error")
    if error:
        return error if isinstance(error, str) else str(error.get("message", error))
    steps = (asset.get("progress") or {}).get("steps") or []
    for step in steps:
        if step.get("state") == "failed" and step.get("error"):
            return f"step {step.get('step')}: {step['error']}"
    return f"asset {asset.get('id')} is {asset.get('status')}"


async def wait_for_assets(
    client: IngestdClient,
    asset_ids: Sequence[str],
    *,
    on_update: AssetCallback | None = None,
    interval: float = 1.0,
    max_network_failures: int = 10,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[JSONObject]:
    """Poll every asset until each is ``ready`` or ``failed``; the final assets, in order.

    ``on_update`` sees every answer. Network errors and 5xx are tolerated up to
    ``max_network_failures`` in a row (a restarting server); other errors are raised.
    """
    final: dict[str, JSONObject] = {}
    failures = 0
    while len(final) < len(asset_ids):
        for asset_id in asset_ids:
            if asset_id in final:
                continue
            try:
                asset = await client.get_asset(asset_id)
            except ClientError as exc:
                failures += 1
                if not exc.retryable or failures > max_network_failures:
                    raise
                continue
            failures = 0
            if on_update is not None:
                on_update(asset)
            if is_terminal(asset):
                final[asset_id] = asset
        if len(final) < len(asset_ids):
            await sleep(interval)
    return [final[asset_id] for asset_id in asset_ids]
