"""The S3 stores against a real S3 server (SeaweedFS ``weed mini``), no mocks.

One server per test session; each test gets its own bucket. Parts are 5 MiB, the least
S3 (and SeaweedFS) accepts for a part that is not the last.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio.lowlevel
import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig

from ingestd.errors import InvalidRequest, NotFound, StorageError, TooLarge
from ingestd.storage.base import IncompleteWrite
from ingestd.storage.s3 import (
    MIB,
    NotReadable,
    S3Config,
    S3Store,
    StorageUnavailable,
    make_client,
    parse_s3_url,
)
from ingestd.storage.s3_staging import S3Staging
from ingestd.testing.seaweed import S3Endpoint, running_seaweed

pytestmark = pytest.mark.anyio

P = 5 * MIB  # the part size of every upload here


def session_for(endpoint: S3Endpoint) -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
    )


@pytest.fixture
def config(seaweed: S3Endpoint) -> S3Config:
    bucket = seaweed.make_bucket(f"t-{uuid.uuid4().hex[:16]}")
    return parse_s3_url(f"s3://{bucket}/media?endpoint={seaweed.endpoint_url}&region=us-east-1")


@pytest.fixture
def store(seaweed: S3Endpoint, config: S3Config, tmp_path: Path) -> S3Store:
    client = make_client(config, session=session_for(seaweed))
    transfer = TransferConfig(multipart_threshold=P, multipart_chunksize=P, max_concurrency=4)
    return S3Store(config, client, tmp_dir=tmp_path, transfer=transfer)


def new_staging(seaweed: S3Endpoint, config: S3Config, **kwargs: int) -> S3Staging:
    """A staging store with its own client, as another process would have."""
    client = make_client(config, session=session_for(seaweed))
    return S3Staging(config, client, max_object_size=1 << 30, min_part_size=P, **kwargs)


@pytest.fixture
def staging(seaweed: S3Endpoint, config: S3Config) -> S3Staging:
    return new_staging(seaweed, config)


async def stream(
    data: bytes, piece: int = 256 * 1024 + 7, fail_after: int | None = None
) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        if fail_after is not None and start >= fail_after:
            raise ConnectionResetError("client went away")
        await anyio.lowlevel.checkpoint()
        yield data[start : start + piece]


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_uploads(store: S3Store | S3Staging) -> list[str]:
    answer = store.client.list_multipart_uploads(Bucket=store.bucket)
    return [u["Key"] for u in answer.get("Uploads", [])]


def staged_keys(staging: S3Staging, upload_id: str) -> list[str]:
    prefix = f"{staging.config.prefix}staging/{upload_id}/"
    answer = staging.client.list_objects_v2(Bucket=staging.bucket, Prefix=prefix)
    return [o["Key"][len(prefix) :] for o in answer.get("Contents", [])]


# -- configuration ---------------------------------------------------------------------------


def test_storage_urls_parse_and_bad_ones_are_refused() -> None:
    config = parse_s3_url("s3://masters/a/b/?endpoint=http://127.0.0.1:8333&region=eu-west-1")
    assert config == S3Config(
        bucket="masters",
        prefix="a/b/",
        endpoint_url="http://127.0.0.1:8333",
        region="eu-west-1",
        path_style=True,
    )
    assert parse_s3_url("s3://masters?path_style=false").prefix == ""
    assert not parse_s3_url("s3://masters?path_style=false").path_style
    for bad in (
        "file:///tmp",
        "s3://key:secret@masters",
        "s3://masters?colour=blue",
        "s3://masters/a/../b",
        "s3://masters?endpoint=ftp://x",
    ):
        with pytest.raises(Exception, match=r"."):
            parse_s3_url(bad)


def test_part_size_fits_ten_thousand_parts_in_whole_mebibytes(
    seaweed: S3Endpoint, config: S3Config
) -> None:
    staging = S3Staging(config, max_object_size=200 << 30)  # 200 GiB
    assert staging.part_size(100 * MIB) == 8 * MIB
    assert staging.part_size(100_000 * MIB + 1) == 11 * MIB
    assert staging.part_size(0) == 21 * MIB  # unknown size: sized for the maximum
    assert staging.part_size(10 * MIB) % MIB == 0


# -- ObjectStore -----------------------------------------------------------------------------


async def test_objects_are_stored_read_and_deleted(store: S3Store, tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 123)
    assert await store.put_bytes("masters/a/one", data) == len(data)
    assert await store.size("masters/a/one") == len(data)
    assert await collect(store.read("masters/a/one")) == data
    middle = await collect(store.read("masters/a/one", MIB - 5, MIB + 10))
    assert middle == data[MIB - 5 : 2 * MIB + 5]
    assert await collect(store.read("masters/a/one", 2 * MIB)) == data[2 * MIB :]
    assert await collect(store.read("masters/a/one", len(data) + 10)) == b""
    chunks = [c async for c in store.read("masters/a/one")]
    assert max(map(len, chunks)) <= MIB

    big = tmp_path / "big.bin"
    big_data = os.urandom(P + MIB + 1)  # past the multipart threshold
    big.write_bytes(big_data)
    assert await store.put_file("masters/a/two", big, move=True) == len(big_data)
    assert not big.exists()
    async with store.local_path("masters/a/two") as local:
        assert sha(local.read_bytes()) == sha(big_data)
    assert not local.exists()

    await store.put_bytes("renditions/a/x", b"x")
    assert await store.delete_prefix("masters/a") == 2
    assert await store.delete_prefix("masters/a/") == 0
    assert await store.size("renditions/a/x") == 1
    await store.delete("renditions/a/x")
    await store.delete("renditions/a/x")  # absent: not an error
    with pytest.raises(NotFound):
        await store.size("renditions/a/x")


async def test_ensure_bucket_creates_a_missing_bucket_once(
    seaweed: S3Endpoint, store: S3Store
) -> None:
    await store.ensure_bucket()  # exists: nothing to do
    config = parse_s3_url(f"s3://n-{uuid.uuid4().hex[:12]}?endpoint={seaweed.endpoint_url}")
    fresh = S3Store(config, make_client(config, session=session_for(seaweed)))
    with pytest.raises(StorageError):
        await fresh.put_bytes("masters/x", b"x")  # no such bucket: not a NotFound
    await fresh.ensure_bucket()
    await fresh.ensure_bucket()
    assert await fresh.put_bytes("masters/x", b"x") == 1


async def test_missing_objects_are_not_found(store: S3Store) -> None:
    with pytest.raises(NotFound):
        await store.size("masters/none")
    with pytest.raises(NotFound):
        await collect(store.read("masters/none"))
    with pytest.raises(NotFound):
        async with store.local_path("masters/none"):
            pass
    with pytest.raises(InvalidRequest):
        await store.size("masters/../etc")


async def test_presigned_urls_serve_the_bytes_until_altered_or_expired(store: S3Store) -> None:
    data = os.urandom(1000)
    await store.put_bytes("renditions/v/clip.mp4", data)
    url = store.presign("renditions/v/clip.mp4", 60, filename='my "clip" é.mp4')
    async with httpx.AsyncClient() as http:
        answer = await http.get(url)
        assert answer.status_code == 200
        assert answer.content == data
        disposition = answer.headers["content-disposition"]
        assert disposition.startswith("attachment;")
        assert "filename*=UTF-8''my%20%22clip%22%20%C3%A9.mp4" in disposition

        altered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert (await http.get(altered)).status_code == 403
        other_key = url.replace("clip.mp4", "clip2.mp4")
        assert (await http.get(other_key)).status_code == 403
        # unsigned: masters are private
        plain = url.split("?", 1)[0]
        assert (await http.get(plain)).status_code == 403

        short = store.presign("renditions/v/clip.mp4", 1)
        await anyio.sleep(2.1)
        assert (await http.get(short)).status_code == 403


# -- StagingStore ----------------------------------------------------------------------------


async def test_blocks_written_out_of_order_assemble_into_the_object(
    seaweed: S3Endpoint, config: S3Config, store: S3Store
) -> None:
    staging = new_staging(seaweed, config, list_page_size=1)  # ListParts in pages of one
    data = os.urandom(2 * P + 1234)
    await staging.create("up_blocks", len(data), key="masters/asset/src")
    await staging.create("up_blocks", len(data), key="masters/asset/src")  # idempotent
    assert len(open_uploads(staging)) == 1
    seen: dict[int, bytes] = {}
    for index in (2, 0, 1):
        block = data[index * P : (index + 1) * P]
        got = bytearray()
        written = await staging.write_at(
            "up_blocks", index * P, stream(block), limit=P, observe=got.extend
        )
        assert written == len(block)
        seen[index] = bytes(got)
    assert b"".join(seen[i] for i in range(3)) == data
    with pytest.raises(NotFound):
        await store.size("masters/asset/src")  # nothing visible before finalize
    await staging.finalize("up_blocks", "masters/asset/src")
    assert sha(await collect(store.read("masters/asset/src"))) == sha(data)
    assert open_uploads(staging) == []
    assert staged_keys(staging, "up_blocks") == []
    await staging.finalize("up_blocks", "masters/asset/src")  # idempotent


async def test_tus_writes_carry_the_tail_across_processes(
    seaweed: S3Endpoint, config: S3Config, store: S3Store
) -> None:
    first, second = new_staging(seaweed, config), new_staging(seaweed, config)
    data = os.urandom(2 * P + 777)
    await first.create("up_tus", 0, key="masters/tus/src")  # deferred length
    cuts = [0, 3 * MIB + 5, P + 11, 2 * P - 1, len(data)]
    whole = hashlib.sha256()
    for i, (start, end) in enumerate(itertools.pairwise(cuts)):
        writer = first if i % 2 == 0 else second
        n = await writer.write_at(
            "up_tus", start, stream(data[start:end], 100_003), limit=1 << 30, observe=whole.update
        )
        assert n == end - start
    assert whole.hexdigest() == sha(data)
    assert [k for k in staged_keys(first, "up_tus") if k.startswith("tail-")] == [f"tail-{2 * P}"]
    await second.finalize("up_tus", "masters/tus/src")
    assert sha(await collect(store.read("masters/tus/src"))) == sha(data)
    assert staged_keys(first, "up_tus") == []


async def test_a_broken_stream_keeps_what_arrived_and_resumes(
    staging: S3Staging, store: S3Store
) -> None:
    data = os.urandom(P + 3 * MIB)
    await staging.create("up_cut", len(data), key="masters/cut/src")
    cut = P + MIB + 100
    with pytest.raises(IncompleteWrite) as caught:
        await staging.write_at("up_cut", 0, stream(data, 50_000, fail_after=cut), limit=len(data))
    kept = caught.value.written
    assert cut <= kept < cut + 50_000
    assert await collect(staging.read_staged("up_cut", P, kept - P)) == data[P:kept]
    rest = await staging.write_at("up_cut", kept, stream(data[kept:]), limit=len(data) - kept)
    assert kept + rest == len(data)
    await staging.finalize("up_cut", "masters/cut/src")
    assert sha(await collect(store.read("masters/cut/src"))) == sha(data)


async def test_limits_and_alignment_are_enforced(staging: S3Staging) -> None:
    await staging.create("up_lim", 3 * P)
    with pytest.raises(TooLarge):
        await staging.write_at("up_lim", 0, stream(os.urandom(P + 10)), limit=P)
    with pytest.raises(StorageError, match="part boundary"):
        await staging.write_at("up_lim", 1000, stream(b"x" * 10), limit=10)
    await staging.write_at("up_lim", P, stream(b"y" * 100), limit=100)  # saved as a tail
    with pytest.raises(StorageError, match="part boundary"):
        await staging.write_at("up_lim", P + 99, stream(b"z"), limit=1)
    assert await staging.write_at("up_lim", P + 100, stream(b"z"), limit=1) == 1


async def test_read_staged_serves_the_tail_only_until_assembled(staging: S3Staging) -> None:
    data = os.urandom(P + 2000)
    await staging.create("up_read", 0)
    await staging.write_at("up_read", 0, stream(data), limit=len(data))
    assert await collect(staging.read_staged("up_read", P + 500, 1000)) == data[P + 500 : P + 1500]
    assert await collect(staging.read_staged("up_read", P)) == data[P:]
    with pytest.raises(NotReadable) as caught:
        await collect(staging.read_staged("up_read", 0, 10))
    assert caught.value.code == "not_readable"
    with pytest.raises(NotReadable):
        await collect(staging.read_staged("up_read", P + 1000, 5000))
    assert S3Staging.readable_before_finalize is False


async def test_deduplicated_blocks_are_copied_in_server_side(
    staging: S3Staging, store: S3Store
) -> None:
    source = os.urandom(3 * P)
    await store.put_bytes("masters/old/src", source)
    data = source[P : 2 * P] + os.urandom(P) + source[:300]
    await staging.create("up_dedup", len(data), key="masters/new/src")
    await staging.copy_in("up_dedup", 0, "masters/old/src", P, P)  # a whole part: UploadPartCopy
    await staging.write_at("up_dedup", P, stream(data[P : 2 * P]), limit=P)
    await staging.copy_in("up_dedup", 2 * P, "masters/old/src", 0, 300)  # the final part
    parts = staging.client.list_parts(
        Bucket=staging.bucket,
        Key="media/masters/new/src",
        UploadId=open_uploads_ids(staging)["media/masters/new/src"],
    )["Parts"]
    assert [p["PartNumber"] for p in parts] == [1, 2, 3]
    await staging.finalize("up_dedup", "masters/new/src")
    assert sha(await collect(store.read("masters/new/src"))) == sha(data)

    await staging.create("up_gone", P)
    with pytest.raises(NotFound):
        await staging.copy_in("up_gone", 0, "masters/never/src", 0, P)


def open_uploads_ids(staging: S3Staging) -> dict[str, str]:
    answer = staging.client.list_multipart_uploads(Bucket=staging.bucket)
    return {u["Key"]: u["UploadId"] for u in answer.get("Uploads", [])}


async def test_unaligned_copies_stream_through(staging: S3Staging, store: S3Store) -> None:
    source = os.urandom(P + 4000)
    await store.put_bytes("masters/old/src", source)
    await staging.create("up_odd", 0)
    await staging.write_at("up_odd", 0, stream(b"h" * 1000), limit=1000)
    await staging.copy_in("up_odd", 1000, "masters/old/src", 10, P + 3000)
    await staging.finalize("up_odd", "masters/odd/src")
    want = b"h" * 1000 + source[10 : P + 3010]
    assert sha(await collect(store.read("masters/odd/src"))) == sha(want)


async def test_partial_uploads_concatenate(staging: S3Staging, store: S3Store) -> None:
    one, two = os.urandom(P + 100), os.urandom(300)
    for upload_id, data in (("up_p1", one), ("up_p2", two)):
        await staging.create(upload_id, len(data))
        await staging.write_at(upload_id, 0, stream(data), limit=len(data))
    await staging.create("up_final", len(one) + len(two), key="masters/cat/src")
    await staging.copy_staged("up_final", 0, "up_p1", len(one))
    await staging.copy_staged("up_final", len(one), "up_p2", len(two))
    # the partials were completed: they read back whole now
    assert await collect(staging.read_staged("up_p1", 50, 100)) == one[50:150]
    await staging.finalize("up_final", "masters/cat/src")
    assert sha(await collect(store.read("masters/cat/src"))) == sha(one + two)
    for upload_id in ("up_p1", "up_p2"):
        await staging.discard(upload_id)
        assert staged_keys(staging, upload_id) == []


async def test_an_upload_without_a_key_is_copied_to_its_key_on_finalize(
    staging: S3Staging, store: S3Store
) -> None:
    data = os.urandom(4000)
    await staging.create("up_nokey", len(data))
    await staging.write_at("up_nokey", 0, stream(data), limit=len(data))
    await staging.finalize("up_nokey", "masters/late/src")
    assert await collect(store.read("masters/late/src")) == data
    assert staged_keys(staging, "up_nokey") == []


async def test_discard_aborts_the_upload_and_removes_staged_objects(staging: S3Staging) -> None:
    await staging.create("up_gone", 2 * P, key="masters/gone/src")
    await staging.write_at("up_gone", 0, stream(os.urandom(P + 10)), limit=P + 10)
    assert staged_keys(staging, "up_gone") == ["state.json", "tail-" + str(P)]
    await staging.discard("up_gone")
    assert open_uploads(staging) == []
    assert staged_keys(staging, "up_gone") == []
    await staging.discard("up_gone")  # absent: not an error
    await staging.discard("up_never")


async def test_stale_uploads_are_listed_by_start_time(staging: S3Staging) -> None:
    await staging.create("up_old1", P, key="masters/s1/src")
    await staging.create("up_old2", 0)
    now = datetime.now(UTC)
    assert await staging.stale_uploads(now + timedelta(minutes=1)) == ["up_old1", "up_old2"]
    assert await staging.stale_uploads(now - timedelta(hours=1)) == []
    await staging.discard("up_old1")
    assert await staging.stale_uploads(now + timedelta(minutes=1)) == ["up_old2"]


async def test_unknown_uploads_are_not_found(staging: S3Staging) -> None:
    with pytest.raises(NotFound):
        await staging.write_at("up_none", 0, stream(b"x"), limit=1)
    with pytest.raises(NotFound):
        await staging.finalize("up_none", "masters/none/src")
    with pytest.raises(NotFound):
        await collect(staging.read_staged("up_none"))
    with pytest.raises(InvalidRequest):
        await staging.create("../etc", 1)


async def test_a_stopped_server_is_a_storage_error(tmp_path: Path) -> None:
    with running_seaweed(tmp_path) as endpoint:
        bucket = endpoint.make_bucket("gone-soon")
        url = f"s3://{bucket}?endpoint={endpoint.endpoint_url}&max_attempts=1"
        config = parse_s3_url(url)
        client = make_client(config, session=session_for(endpoint))
        store = S3Store(config, client)
        staging = S3Staging(config, client, max_object_size=1 << 30, min_part_size=P)
        await store.put_bytes("masters/x", b"x")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        await store.size("masters/x")
    assert "cannot reach" in caught.value.message
    with pytest.raises(StorageError):
        await collect(store.read("masters/x"))
    with pytest.raises(StorageError):
        await staging.create("up_x", 10)
    assert time.monotonic() - started < 10
