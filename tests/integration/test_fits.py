"""FITS files through media/: validation (checksums, truncation), keys, metadata, previews."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingestd.errors import SourceRejected
from ingestd.media import Toolchain
from ingestd.media.fits import read_fits_metadata, validate_fits
from ingestd.media.fits_previews import make_fits_previews, to_image
from ingestd.media.sniff import sniff
from ingestd.testing.fits import (
    data_offset,
    flip_byte,
    gradient,
    header_card_offset,
    make_fits_cube,
    make_fits_image,
    truncate_to,
)


def test_a_multi_hdu_cube_validates_with_its_checksums(tmp_path: Path) -> None:
    path = make_fits_cube(tmp_path / "cube.fits")
    assert sniff(path).kind == "fits"
    checked = validate_fits(path)
    assert checked.checksums == "valid"
    assert [(h.index, h.name, h.type) for h in checked.hdus] == [
        (0, "PRIMARY", "PRIMARY"),
        (1, "SCI", "IMAGE"),
        (2, "EVENTS", "BINTABLE"),
    ]
    assert checked.hdus[0].shape == (12, 48, 64)
    assert checked.image is not None and checked.image.index == 0


def test_keys_follow_headers_and_data_not_checksum_cards(tmp_path: Path) -> None:
    first = validate_fits(make_fits_image(tmp_path / "a.fits"))
    # the same content written again: CHECKSUM may differ (its comment holds the time)
    again = validate_fits(make_fits_image(tmp_path / "b.fits"))
    assert (again.header_key, again.data_key) == (first.header_key, first.data_key)
    retitled = validate_fits(make_fits_image(tmp_path / "c.fits", header={"OBJECT": "Moon"}))
    assert retitled.header_key != first.header_key and retitled.data_key == first.data_key
    bigger = validate_fits(make_fits_image(tmp_path / "d.fits", shape=(50, 64)))
    assert bigger.data_key != first.data_key


def test_a_file_without_checksums_is_accepted_unless_required(tmp_path: Path) -> None:
    path = make_fits_image(tmp_path / "plain.fits", checksum=False)
    checked = validate_fits(path)
    assert checked.checksums == "absent"
    assert checked.data_key  # hashed from the data itself
    with pytest.raises(SourceRejected, match=r"HDU 0 \(PRIMARY\) has no CHECKSUM/DATASUM"):
        validate_fits(path, require_checksums=True)


def test_a_flipped_data_byte_names_the_hdu_and_its_datasum(tmp_path: Path) -> None:
    path = make_fits_cube(tmp_path / "cube.fits")
    flip_byte(path, data_offset(path, 1) + 5)
    with pytest.raises(SourceRejected, match=r"DATASUM mismatch: the data of HDU 1 \(SCI\)"):
        validate_fits(path)


def test_a_flipped_header_byte_is_a_checksum_mismatch(tmp_path: Path) -> None:
    path = make_fits_cube(tmp_path / "cube.fits")
    flip_byte(path, header_card_offset(path, 0, "OBJECT") + 11, mask=1)  # 'Sun' -> 'Run'
    with pytest.raises(SourceRejected, match=r"CHECKSUM mismatch: the header of HDU 0"):
        validate_fits(path)


def test_a_truncated_file_fails_on_its_data(tmp_path: Path) -> None:
    path = make_fits_cube(tmp_path / "cube.fits", extensions=False)
    truncate_to(path, data_offset(path, 0) + 4000)
    with pytest.raises(SourceRejected, match=r"the data of HDU 0 \(PRIMARY\) is truncated"):
        validate_fits(path)


def test_text_named_fits_is_not_fits(tmp_path: Path) -> None:
    path = tmp_path / "fake.fits"
    path.write_text("SIMPLE but not really\n" * 200)
    assert sniff(path).kind != "fits"
    with pytest.raises(SourceRejected):
        validate_fits(path)


def test_metadata_has_the_typed_core_and_every_header(tmp_path: Path) -> None:
    path = make_fits_cube(tmp_path / "cube.fits")
    meta = read_fits_metadata(path)
    core = meta.core
    assert (core["instrument"], core["telescope"], core["bunit"]) == ("HMI", "SDO", "DN/s")
    assert core["obs_start"] == "2024-05-10T12:00:00"
    assert core["obs_end"] == "2024-05-10T12:05:00"
    assert core["shape"] == [12, 48, 64]
    assert core["wavelength"]["unit"] == "Angstrom"
    assert core["wavelength"]["min"] == pytest.approx(6173.0)
    assert core["wavelength"]["max"] == pytest.approx(6173.0 + 11 * 0.05)
    assert [a["ctype"] for a in core["axes"]] == ["HPLN-TAN", "HPLT-TAN", "WAVE"]
    assert meta.keywords["INSTRUME"] == "HMI" and meta.keywords["NAXIS3"] == 12
    assert [h["name"] for h in meta.hdus] == ["PRIMARY", "SCI", "EVENTS"]
    assert meta.hdus[2]["keywords"]["TTYPE1"] == "t"
    assert meta.headers_text.count("# HDU ") == 3 and "EXTNAME = 'EVENTS" in meta.headers_text


def test_observation_times_from_mjd_and_exposure(tmp_path: Path) -> None:
    path = make_fits_image(
        tmp_path / "mjd.fits",
        header={"DATE-OBS": "", "DATE-END": "", "MJD-OBS": 60000.5, "EXPTIME": 30.0},
    )
    core = read_fits_metadata(path).core
    assert core["obs_start"] == "2023-02-25T12:00:00"
    assert core["obs_end"] == "2023-02-25T12:00:30"


def test_zscale_image_keeps_the_fits_bottom_row_at_the_bottom() -> None:
    plane = gradient(40, 30)  # row 0 (the FITS bottom) is the darkest
    pixels = np.asarray(to_image(plane))
    assert pixels.shape == (40, 30)
    assert pixels[-1].mean() < pixels[0].mean()  # the PNG's last row is the FITS first
    assert pixels[-1].max() <= 5 and pixels[0].min() >= 250  # black bottom, white top


def decode_gray(ffmpeg: str, movie: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(movie), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width)


def test_cube_previews_with_one_scaling_for_the_movie(tmp_path: Path, ffmpeg: str) -> None:
    path = make_fits_cube(tmp_path / "cube.fits", shape=(9, 47, 63))  # odd sizes
    made = asyncio.run(make_fits_previews(Toolchain.discover(), path, tmp_path / "out", hdu=0))
    assert made.plane == 4 and made.source == "generated"
    with Image.open(made.preview) as png:
        assert png.format == "PNG" and png.size == (63, 47)
        pixels = np.asarray(png)
    assert pixels[-1].mean() < pixels[0].mean()
    assert made.movie is not None and made.frames == 9
    assert made.movie_width is not None and made.movie_height is not None
    assert made.movie_width % 2 == 0 and made.movie_height % 2 == 0
    frames = decode_gray(ffmpeg, made.movie, made.movie_width, made.movie_height)
    assert len(frames) == 9
    # plane k is the gradient times (1 + k/9): with one scaling the last frame is brighter
    assert frames[-1].mean() > frames[0].mean() + 10


def test_a_preview_left_beside_the_file_is_used(tmp_path: Path) -> None:
    path = make_fits_image(tmp_path / "image.fits")
    beside = tmp_path / "image.png"
    Image.new("L", (30, 20), color=200).save(beside)
    made = asyncio.run(
        make_fits_previews(Toolchain.discover(), path, tmp_path / "out", hdu=0, beside=beside)
    )
    assert made.source == "beside" and made.movie is None
    with Image.open(made.preview) as png:
        assert png.size == (30, 20) and np.asarray(png).min() == 200


def test_sniffing_needs_ascii_cards_filling_a_block(tmp_path: Path) -> None:
    path = tmp_path / "binary.fits"
    path.write_bytes(b"SIMPLE  =                    T" + bytes(range(256)) * 12)
    assert sniff(path).kind != "fits"
