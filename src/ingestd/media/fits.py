"""FITS files: validation (data read, CHECKSUM/DATASUM verified), content keys, metadata.

Synchronous on purpose: astropy blocks, so callers run these functions in a worker thread.
Large cubes are memory-mapped; nothing here holds a whole data unit in memory at once.

astropy only *warns* about a bad checksum and opens a truncated file without complaint until
its data is read, so validation turns warnings into errors and reads every data unit.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits  # type: ignore[import-untyped]

from ingestd.errors import SourceRejected

__all__ = [
    "BLOCK",
    "CARD",
    "FitsHdu",
    "FitsKeys",
    "FitsMetadata",
    "FitsValidation",
    "header_cards",
    "read_fits_metadata",
    "validate_fits",
]

CARD = 80
BLOCK = 2880
CHECKSUM_CARDS = frozenset({"CHECKSUM", "DATASUM"})
_COMMENTARY = frozenset({"COMMENT", "HISTORY", ""})
_READ_CHUNK = 8 << 20
_WAVELENGTH_TYPES = ("WAVE", "AWAV")
_SPECTRAL_TYPES = ("WAVE", "AWAV", "FREQ", "ENER", "WAVN", "VRAD", "VOPT", "ZOPT", "VELO", "BETA")
_TIME_TYPES = ("TIME", "UTC", "TAI", "TT", "TDB", "MJD", "JD")
_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)
_NAMED_HDU = re.compile(r"HDU \('(.*)', (\d+)\)")  # astropy's (EXTNAME, EXTVER)


@dataclass(frozen=True)
class FitsHdu:
    index: int
    name: str  # EXTNAME, or PRIMARY
    type: str  # PRIMARY, IMAGE, BINTABLE, TABLE...
    shape: tuple[int, ...]  # numpy order (slowest axis first); () without data
    bitpix: int
    header_offset: int
    data_offset: int
    data_size: int  # padded to whole blocks
    checksum: bool  # both CHECKSUM and DATASUM cards present (and verified)

    @property
    def label(self) -> str:
        return f"HDU {self.index} ({self.name})"


@dataclass(frozen=True)
class FitsKeys:
    """What the FITS graph keys its steps on."""

    storage: str  # the file's SHA-256
    header: str  # hash of every header without its CHECKSUM/DATASUM cards
    data: str  # hash of the data units' DATASUMs (or of the data when one is absent)


@dataclass(frozen=True)
class FitsValidation:
    hdus: tuple[FitsHdu, ...]
    checksums: str  # "valid" (every HDU), "absent" (none), "partial"
    header_key: str
    data_key: str

    @property
    def image(self) -> FitsHdu | None:
        """The first HDU holding an image of two or more axes: what previews show."""
        return next((h for h in self.hdus if h.type in _IMAGES and len(h.shape) >= 2), None)

    def to_dict(self) -> dict[str, Any]:
        image = self.image
        return {
            "checksums": self.checksums,
            "hdus": [
                {"index": h.index, "name": h.name, "type": h.type, "shape": list(h.shape)}
                for h in self.hdus
            ],
            "image_hdu": image.index if image else None,
            "keys": {"header": self.header_key, "data": self.data_key},
        }


@dataclass(frozen=True)
class FitsMetadata:
    keywords: dict[str, Any]  # the primary header, keyword -> value (JSON types)
    core: dict[str, Any]  # the typed core: instrument, telescope, times, wavelength, axes
    hdus: list[dict[str, Any]]  # per HDU: index, name, type, cards and its keywords
    headers_text: str  # every header's cards, one per line, an HDU marker before each
    warnings: list[str]


_IMAGES = frozenset({"PRIMARY", "IMAGE", "COMPRESSED_IMAGE"})


def _hdu_type(hdu: Any) -> str:
    if isinstance(hdu, fits.PrimaryHDU):
        return "PRIMARY"
    if isinstance(hdu, fits.CompImageHDU):
        return "COMPRESSED_IMAGE"
    if isinstance(hdu, fits.ImageHDU):
        return "IMAGE"
    xtension = hdu.header.get("XTENSION")
    return str(xtension).strip() if xtension else type(hdu).__name__.upper()


def _shape(hdu: Any) -> tuple[int, ...]:
    header = hdu.header
    naxis = int(header.get("ZNAXIS", header.get("NAXIS", 0)) or 0)
    prefix = "ZNAXIS" if "ZNAXIS" in header else "NAXIS"
    dims = [int(header.get(f"{prefix}{i}", 0) or 0) for i in range(1, naxis + 1)]
    if hdu.header.get("XTENSION") in ("BINTABLE", "TABLE") and "ZNAXIS" not in header:
        return (dims[1],) if len(dims) > 1 else ()
    return tuple(reversed(dims)) if dims and all(dims) else ()


def _describe(index: int, hdu: Any) -> FitsHdu:
    info = hdu.fileinfo()
    header = hdu.header
    name = str(header.get("EXTNAME", "PRIMARY" if index == 0 else "")).strip() or f"#{index}"
    return FitsHdu(
        index=index,
        name=name,
        type=_hdu_type(hdu),
        shape=_shape(hdu),
        bitpix=int(header.get("BITPIX", 8)),
        header_offset=int(info["hdrLoc"]),
        data_offset=int(info["datLoc"]),
        data_size=int(info["datSpan"]),
        checksum="CHECKSUM" in header and "DATASUM" in header,
    )


def header_cards(raw: bytes) -> Iterator[str]:
    """The cards of a raw header up to END, without blank padding."""
    for start in range(0, len(raw) - CARD + 1, CARD):
        card = raw[start : start + CARD].decode("ascii", "replace").rstrip()
        if card == "END":
            return
        if card:
            yield card


def _read_span(fh: Any, h: FitsHdu, digest: Any) -> None:
    fh.seek(h.data_offset)
    left = h.data_size
    while left > 0:
        chunk = fh.read(min(_READ_CHUNK, left))
        if not chunk:
            raise SourceRejected(f"the data of {h.label} is truncated")
        digest.update(chunk)
        left -= len(chunk)


def _keys(path: Path, hdus: tuple[FitsHdu, ...]) -> tuple[str, str]:
    """The header key and the data key; reads every data unit that has no DATASUM."""
    header = hashlib.sha256()
    data = hashlib.sha256()
    with path.open("rb") as fh:
        for h in hdus:
            fh.seek(h.header_offset)
            raw = fh.read(h.data_offset - h.header_offset)
            for card in header_cards(raw):
                if card[:8].rstrip() not in CHECKSUM_CARDS:
                    header.update(card.encode("ascii", "replace") + b"\n")
            header.update(b"\x00")
            if not h.data_size:
                continue
            data.update(f"{h.index}:{h.type}:{h.bitpix}:{h.shape}:".encode())
            if h.checksum:  # astropy verified it against the data while opening
                data.update(f"DATASUM={_card_value(raw, 'DATASUM')};".encode())
            else:
                _read_span(fh, h, data)
    return header.hexdigest()[:32], data.hexdigest()[:32]


def _card_value(raw: bytes, keyword: str) -> str:
    for card in header_cards(raw):
        if card[:8].rstrip() == keyword and card[8:10] == "= ":
            return card[10:].split("/", 1)[0].strip().strip("'").strip()
    return ""


def _checksum_failure(path: Path, h: FitsHdu) -> str:
    """Which card of a failing HDU does not match: DATASUM (its data) or CHECKSUM."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the verdict comes from the return values
        with path.open("rb") as fh, fits.open(fh, memmap=True, lazy_load_hdus=True) as hdul:
            hdu = hdul[h.index]
            if "DATASUM" in hdu.header and hdu.verify_datasum() == 0:
                return f"DATASUM mismatch: the data of {h.label} is corrupt"
            return f"CHECKSUM mismatch: the header of {h.label} was altered"


def _structure(path: Path) -> list[FitsHdu]:
    """Every HDU's header, read leniently: where each HDU and its data unit lie."""
    hdus: list[FitsHdu] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the strict pass below reports warnings
            with path.open("rb") as fh, fits.open(fh, memmap=True, lazy_load_hdus=True) as hdul:
                for index, hdu in enumerate(hdul):
                    hdus.append(_describe(index, hdu))
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise SourceRejected(f"the header of HDU {len(hdus)} cannot be read: {exc}") from exc
    if not hdus:
        raise SourceRejected("the file holds no FITS HDU")
    size = path.stat().st_size
    for h in hdus:
        if h.data_offset + h.data_size > size:
            raise SourceRejected(
                f"the data of {h.label} is truncated: it needs {h.data_size} bytes from "
                f"offset {h.data_offset}, the file has {size}"
            )
    return hdus


def _named(hdus: list[FitsHdu], found: re.Match[str] | None) -> FitsHdu | None:
    """The HDU a warning names as ('EXTNAME', EXTVER)."""
    if found is None:
        return None
    same = [h for h in hdus if h.name.upper() == found[1].upper()]
    version = int(found[2])
    return same[version - 1] if 0 < version <= len(same) else (same[0] if same else None)


def _verify(path: Path, hdus: list[FitsHdu]) -> None:
    """Open again with checksums verified and every warning an error (astropy only warns
    about a bad checksum); each HDU's data is read to verify its DATASUM."""
    done = 0
    try:
        with warnings.catch_warnings(), path.open("rb") as fh:
            warnings.simplefilter("error")
            with fits.open(fh, memmap=True, checksum=True, lazy_load_hdus=True) as hdul:
                for done in range(len(hdus)):
                    hdul[done]
    except Warning as exc:
        text = str(exc).strip()
        failing = _named(hdus, _NAMED_HDU.search(text)) or hdus[min(done, len(hdus) - 1)]
        if "checksum" in text.lower() or "datasum" in text.lower():
            raise SourceRejected(_checksum_failure(path, failing)) from exc
        raise SourceRejected(f"{failing.label} is not valid FITS: {text}") from exc
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        failing = hdus[min(done, len(hdus) - 1)]
        raise SourceRejected(f"the data of {failing.label} cannot be read: {exc}") from exc


def validate_fits(path: Path, *, require_checksums: bool = False) -> FitsValidation:
    """Read every header and every data unit, verifying CHECKSUM/DATASUM where present.

    Raises :class:`SourceRejected` naming the HDU (index and EXTNAME) that failed; a file
    without checksum cards is accepted unless ``require_checksums``.
    """
    hdus = _structure(path)
    present = [h.checksum for h in hdus]
    checksums = "valid" if all(present) else "absent" if not any(present) else "partial"
    if require_checksums and checksums != "valid":
        missing = next(h for h in hdus if not h.checksum)
        raise SourceRejected(
            f"{missing.label} has no CHECKSUM/DATASUM cards, and checksums are required"
        )
    _verify(path, hdus)
    header_key, data_key = _keys(path, tuple(hdus))
    return FitsValidation(tuple(hdus), checksums, header_key, data_key)


# -- metadata --------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, fits.card.Undefined):
        return None
    return str(value)


def _keywords(header: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for card in header.cards:
        key = str(card.keyword)
        if key in _COMMENTARY:
            out.setdefault(key or "BLANK", []).append(str(card.value))
        elif key not in out:
            out[key] = _json_value(card.value)
    return out


def _number(header: Mapping[str, Any], key: str, default: float) -> float:
    value = header.get(key, default)
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
    )


def _axis_range(header: Mapping[str, Any], i: int) -> tuple[float, float] | None:
    n = int(header.get(f"NAXIS{i}", 0) or 0)
    if n < 1:
        return None
    crval = _number(header, f"CRVAL{i}", 0.0)
    crpix = _number(header, f"CRPIX{i}", 0.0)
    if f"CD{i}_{i}" in header:
        delta = _number(header, f"CD{i}_{i}", 1.0)
    else:
        delta = _number(header, f"CDELT{i}", 1.0) * _number(header, f"PC{i}_{i}", 1.0)
    ctype = str(header.get(f"CTYPE{i}", ""))

    def world(p: float) -> float:
        if ctype.endswith("-LOG") and crval:
            return crval * math.exp(delta * (p - crpix) / crval)
        return crval + delta * (p - crpix)

    a, b = world(1.0), world(float(n))
    return min(a, b), max(a, b)


def _iso(text: Any) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip().removesuffix("Z"))
    except ValueError:
        return text.strip()
    return moment.replace(tzinfo=None).isoformat()


def _times(header: Mapping[str, Any]) -> tuple[str | None, str | None]:
    start = _iso(header.get("DATE-OBS") or header.get("DATE_OBS"))
    end = _iso(header.get("DATE-END") or header.get("DATE_END"))
    mjd = header.get("MJD-OBS")
    if start is None and isinstance(mjd, int | float) and not isinstance(mjd, bool):
        start = (_MJD_EPOCH + timedelta(days=float(mjd))).replace(tzinfo=None).isoformat()
    exptime = header.get("EXPTIME")
    if end is None and start and isinstance(exptime, int | float) and not isinstance(exptime, bool):
        try:
            end = (datetime.fromisoformat(start) + timedelta(seconds=float(exptime))).isoformat()
        except ValueError:
            end = None
    return start, end


def _core(primary: Mapping[str, Any], image: Mapping[str, Any] | None) -> dict[str, Any]:
    data = image if image is not None else primary

    def pick(key: str) -> Any:
        value = data.get(key, primary.get(key))
        return _json_value(value) if value is not None else None

    naxis = int(data.get("NAXIS", 0) or 0)
    axes: list[dict[str, Any]] = []
    wavelength: dict[str, Any] | None = None
    time_axis: int | None = None
    for i in range(1, naxis + 1):
        ctype = str(data.get(f"CTYPE{i}", "")).strip()
        cunit = str(data.get(f"CUNIT{i}", "")).strip()
        axes.append({"axis": i, "ctype": ctype, "cunit": cunit, "size": data.get(f"NAXIS{i}")})
        base = ctype.split("-", 1)[0]
        if base in _TIME_TYPES and time_axis is None:
            time_axis = i
        if base in _SPECTRAL_TYPES and wavelength is None:
            span = _axis_range(data, i)
            if span is not None:
                unit = cunit or ("m" if base in _WAVELENGTH_TYPES else "")
                wavelength = {"axis": i, "ctype": ctype, "min": span[0], "max": span[1]}
                wavelength["unit"] = unit
    if wavelength is None and ("WAVELMIN" in data or "WAVELMIN" in primary):
        lo, hi = pick("WAVELMIN"), pick("WAVELMAX")
        wavelength = {"min": lo, "max": hi, "unit": pick("WAVEUNIT") or pick("CUNIT3")}
    start, end = _times({**primary, **{k: v for k, v in data.items() if v is not None}})
    dims = [int(data.get(f"NAXIS{i}", 0) or 0) for i in range(1, naxis + 1)]
    return {
        "instrument": pick("INSTRUME"),
        "telescope": pick("TELESCOP"),
        "object": pick("OBJECT"),
        "obs_start": start,
        "obs_end": end,
        "wavelength": wavelength,
        "bunit": pick("BUNIT"),
        "shape": list(reversed(dims)),
        "naxis": dims,
        "axes": axes,
        "spectral_axis": wavelength.get("axis") if wavelength else None,
        "time_axis": time_axis,
    }


def _plain(header: Any) -> dict[str, Any]:
    """Keyword -> value of the cards that hold one (first occurrence wins)."""
    out: dict[str, Any] = {}
    for card in header.cards:
        if card.keyword not in _COMMENTARY and card.keyword not in out:
            out[card.keyword] = card.value
    return out


def read_fits_metadata(path: Path) -> FitsMetadata:
    """Every header as text and as keywords, and the typed core of the first image HDU.

    Headers only: no data unit is read. Header warnings (non-standard cards) are recorded,
    not raised: the file passed validation already.
    """
    texts: list[str] = []
    hdus: list[dict[str, Any]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with (
            path.open("rb") as fh,
            fits.open(fh, memmap=True, lazy_load_hdus=True) as hdul,
            path.open("rb") as raw,  # astropy moves fh
        ):
            primary: dict[str, Any] = {}
            image: dict[str, Any] | None = None
            keywords: dict[str, Any] = {}
            for index, hdu in enumerate(hdul):
                described = _describe(index, hdu)
                raw.seek(described.header_offset)
                size = described.data_offset - described.header_offset
                cards = list(header_cards(raw.read(size)))
                texts.append(f"# HDU {index} {described.name} {described.type}\n")
                texts.append("".join(f"{c}\n" for c in cards))
                plain = _plain(hdu.header)
                if index == 0:
                    primary, keywords = plain, _keywords(hdu.header)
                if image is None and described.type in _IMAGES and len(described.shape) >= 2:
                    image = plain
                hdus.append(
                    {
                        **asdict(described),
                        "shape": list(described.shape),
                        "cards": len(cards),
                        "keywords": _keywords(hdu.header) if index else None,
                    }
                )
    return FitsMetadata(
        keywords=keywords,
        core=_core(primary, image),
        hdus=hdus,
        headers_text="".join(texts),
        warnings=[str(w.message) for w in caught][:20],
    )
