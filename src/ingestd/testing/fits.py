"""Small FITS files for tests, written by astropy, and ways to break them.

Synchronous on purpose (fixtures call them). Images are gradients so that orientation shows:
the value grows with the row, so FITS row 0 (the bottom) is the darkest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits  # type: ignore[import-untyped]

__all__ = [
    "CORE_HEADER",
    "data_offset",
    "flip_byte",
    "header_card_offset",
    "make_fits_cube",
    "make_fits_image",
    "truncate_to",
]

CORE_HEADER: Mapping[str, Any] = {
    "INSTRUME": "HMI",
    "TELESCOP": "SDO",
    "OBJECT": "Sun",
    "DATE-OBS": "2024-05-10T12:00:00.000",
    "DATE-END": "2024-05-10T12:05:00.000",
    "BUNIT": "DN/s",
}


def gradient(rows: int, columns: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Row r holds r (plus a little of the column): the bottom row of the FITS image is 0."""
    r = np.arange(rows, dtype=np.float32)[:, None]
    c = np.arange(columns, dtype=np.float32)[None, :]
    return (r + 0.01 * c).astype(np.float32)


def _header(values: Mapping[str, Any]) -> Any:
    header = fits.Header()
    for key, value in values.items():
        header[key] = value
    return header


def make_fits_image(
    path: Path,
    *,
    shape: tuple[int, int] = (48, 64),
    checksum: bool = True,
    header: Mapping[str, Any] | None = None,
) -> Path:
    """A 2-D float32 gradient in the primary HDU."""
    values = {**CORE_HEADER, **(header or {})}
    hdu = fits.PrimaryHDU(gradient(*shape), header=_header(values))
    hdu.writeto(path, overwrite=True, checksum=checksum)
    return path


def make_fits_cube(
    path: Path,
    *,
    shape: tuple[int, int, int] = (12, 48, 64),
    checksum: bool = True,
    header: Mapping[str, Any] | None = None,
    extensions: bool = True,
) -> Path:
    """A float32 cube with a spectral third axis (WAVE, Angstrom), and with ``extensions`` an
    IMAGE extension (EXTNAME SCI) and a BINTABLE one (EXTNAME EVENTS) after it."""
    planes, rows, columns = shape
    cube = np.stack([gradient(rows, columns) * (1 + k / planes) for k in range(planes)])
    values = {
        **CORE_HEADER,
        "CTYPE1": "HPLN-TAN",
        "CUNIT1": "arcsec",
        "CTYPE2": "HPLT-TAN",
        "CUNIT2": "arcsec",
        "CTYPE3": "WAVE",
        "CUNIT3": "Angstrom",
        "CRPIX3": 1.0,
        "CRVAL3": 6173.0,
        "CDELT3": 0.05,
        **(header or {}),
    }
    hdus = [fits.PrimaryHDU(cube.astype(np.float32), header=_header(values))]
    if extensions:
        hdus.append(fits.ImageHDU(gradient(16, 16).astype(np.int16), name="SCI"))
        columns_ = [fits.Column(name="t", format="D", array=np.arange(10, dtype=np.float64))]
        hdus.append(fits.BinTableHDU.from_columns(columns_, name="EVENTS"))
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=checksum)
    return path


def _locations(path: Path, index: int) -> tuple[int, int]:
    with path.open("rb") as fh, fits.open(fh, lazy_load_hdus=True) as hdul:
        info = hdul[index].fileinfo()
        return int(info["hdrLoc"]), int(info["datLoc"])


def data_offset(path: Path, index: int) -> int:
    """Where the data unit of HDU ``index`` starts."""
    return _locations(path, index)[1]


def header_card_offset(path: Path, index: int, keyword: str) -> int:
    """Where the card ``keyword`` of HDU ``index``'s header starts."""
    start, end = _locations(path, index)
    with path.open("rb") as fh:
        fh.seek(start)
        raw = fh.read(end - start)
    for at in range(0, len(raw), 80):
        if raw[at : at + 8].decode("ascii").rstrip() == keyword:
            return start + at
    raise KeyError(f"HDU {index} has no {keyword} card")


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> Path:
    """Flip the bits ``mask`` of one byte in place (``mask=1`` keeps header text ASCII)."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([value ^ mask]))
    return path


def truncate_to(path: Path, size: int) -> Path:
    with path.open("r+b") as fh:
        fh.truncate(size)
    return path
