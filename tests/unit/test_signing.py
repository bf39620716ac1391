from __future__ import annotations

import pytest

from ingestd.auth.signing import UrlSigner


def _parts(path: str) -> tuple[int, str, str]:
    _, o, expires, sig, key = path.split("/", 4)
    assert o == "o"
    return int(expires), sig, key


def test_signature_covers_the_asset_scope() -> None:
    signer = UrlSigner(b"secret", ttl_s=600)
    expires, sig, key = _parts(signer.sign("renditions/as_1/stream/master.m3u8", now=1000))
    assert signer.verify(expires, sig, key, now=1000)
    # a relative segment of the same asset carries the same signature
    assert signer.verify(expires, sig, "renditions/as_1/stream/aac_128/seg_1.m4s", now=1000)
    # another asset, the masters area, a forged signature, or too late: refused
    assert not signer.verify(expires, sig, "renditions/as_2/stream/master.m3u8", now=1000)
    assert not signer.verify(expires, sig, "masters/as_1/src/original", now=1000)
    assert not signer.verify(expires, sig[:-1] + "A", key, now=1000)
    assert not signer.verify(expires, sig, key, now=expires + 1)
    assert not UrlSigner(b"other").verify(expires, sig, key, now=1000)


def test_only_rendition_keys_can_be_signed() -> None:
    with pytest.raises(ValueError):
        UrlSigner(b"s").sign("masters/as_1/src/original")
