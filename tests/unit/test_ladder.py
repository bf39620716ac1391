"""Ladder planning: which renditions a source gets, their sizes, frame rates and GOPs."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from ingestd.media.ladder import (
    DEFAULT_PROFILE,
    PlannedRung,
    Profile,
    Rung,
    display_size,
    plan_ladder,
    profile_from_dict,
)


def sizes(rungs: list[PlannedRung]) -> list[tuple[str, int, int]]:
    return [(r.name, r.width, r.height) for r in rungs]


def test_1080p_source_gets_the_rungs_up_to_1080p() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=1920, display_height=1080, fps=30)
    assert sizes(planned) == [
        ("1080p", 1920, 1080),
        ("720p", 1280, 720),
        ("540p", 960, 540),
        ("360p", 640, 360),
        ("234p", 416, 234),
    ]
    assert [r.video_bitrate for r in planned] == [6_000_000, 3_000_000, 2_000_000, 730_000, 145_000]


def test_4k_source_includes_2160p_and_1440p() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=3840, display_height=2160, fps=25)
    assert sizes(planned)[:3] == [
        ("2160p", 3840, 2160),
        ("1440p", 2560, 1440),
        ("1080p", 1920, 1080),
    ]
    assert len(planned) == 7


def test_portrait_source_gets_portrait_rungs() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=1080, display_height=1920, fps=30)
    assert sizes(planned) == [
        ("1080p", 1080, 1920),
        ("720p", 720, 1280),
        ("540p", 540, 960),
        ("360p", 360, 640),
        ("234p", 234, 416),
    ]


def test_scope_film_keeps_its_width_and_aspect_ratio() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=1920, display_height=804, fps=24)
    assert sizes(planned)[:2] == [("1080p", 1920, 804), ("720p", 1280, 536)]


@pytest.mark.parametrize(
    ("width", "height", "sar", "rotation", "expected"),
    [
        (1920, 1080, None, 0, (1920, 1080)),
        (1920, 1080, Fraction(1), 90, (1080, 1920)),
        (1920, 1080, Fraction(1), 270, (1080, 1920)),
        (1920, 1080, Fraction(1), 180, (1920, 1080)),
        (720, 576, Fraction(64, 45), 0, (1024, 576)),
        (720, 576, Fraction(64, 45), 90, (576, 1024)),
        (1440, 1080, Fraction(4, 3), 0, (1920, 1080)),
    ],
)
def test_display_size(width, height, sar, rotation, expected) -> None:
    assert display_size(width, height, sar, rotation) == expected


def test_rotated_landscape_coding_is_planned_as_portrait() -> None:
    width, height = display_size(1920, 1080, Fraction(1), 90)
    planned = plan_ladder(DEFAULT_PROFILE, display_width=width, display_height=height, fps=30)
    assert sizes(planned)[0] == ("1080p", 1080, 1920)
    assert all(r.height > r.width for r in planned)


def test_display_size_rejects_odd_angles_and_empty_pictures() -> None:
    with pytest.raises(ValueError, match="multiple of 90"):
        display_size(1920, 1080, None, 45)
    with pytest.raises(ValueError, match="positive"):
        display_size(0, 1080)


@pytest.mark.parametrize(("width", "height"), [(853, 480), (1279, 719), (321, 181), (1917, 1079)])
def test_odd_sources_give_even_sizes_never_larger_than_the_source(width, height) -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=width, display_height=height, fps=25)
    assert planned
    for rung in planned:
        assert rung.width % 2 == 0 and rung.height % 2 == 0
        assert rung.width <= width and rung.height <= height
        assert abs(rung.width / rung.height - width / height) < 0.02


def test_853x480_source() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=853, display_height=480, fps=25)
    assert sizes(planned) == [("360p", 640, 360), ("234p", 416, 234)]


def test_a_source_a_few_pixels_short_of_a_rung_keeps_it_at_its_own_size() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=1279, display_height=719, fps=25)
    assert sizes(planned)[0] == ("720p", 1278, 718)


def test_small_source_gets_one_rung_not_upscaled() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=426, display_height=240, fps=25)
    assert sizes(planned) == [("234p", 416, 234)]
    tiny = plan_ladder(DEFAULT_PROFILE, display_width=320, display_height=180, fps=25)
    assert sizes(tiny) == [("180p", 320, 180)]
    assert tiny[0].video_bitrate == 145_000
    odd = plan_ladder(DEFAULT_PROFILE, display_width=161, display_height=91, fps=25)
    assert sizes(odd) == [("90p", 160, 90)]


def test_duplicate_sizes_collapse() -> None:
    profile = Profile("close", (Rung("a", 720, 3_000_000), Rung("b", 700, 2_800_000)))
    planned = plan_ladder(profile, display_width=1240, display_height=698, fps=25)
    assert sizes(planned) == [("a", 1240, 698)]


def test_frame_rate_cap_uses_a_divisor_and_keeps_keyframes_aligned() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=1920, display_height=1080, fps=60)
    by_name = {r.name: r for r in planned}
    assert (by_name["1080p"].fps, by_name["1080p"].fps_divisor) == (60, 1)
    assert (by_name["360p"].fps, by_name["360p"].fps_divisor) == (30, 2)
    assert by_name["1080p"].gop_frames == 120
    assert by_name["360p"].gop_frames == 60
    assert {r.keyframe_interval_s for r in planned} == {2.0}
    assert {r.segment_s for r in planned} == {6.0}


def test_profile_cap_on_high_frame_rates() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=1280, display_height=720, fps=120)
    assert (planned[0].fps, planned[0].fps_divisor, planned[0].gop_frames) == (60, 2, 120)
    assert (planned[-1].fps, planned[-1].fps_divisor, planned[-1].gop_frames) == (30, 4, 60)


def test_ntsc_rates_divide_exactly() -> None:
    planned = plan_ladder(
        DEFAULT_PROFILE, display_width=1920, display_height=1080, fps=60000 / 1001
    )
    top, bottom = planned[0], planned[-1]
    assert top.gop_frames == 120 and bottom.gop_frames == 60
    assert bottom.fps == pytest.approx(30000 / 1001)
    assert top.keyframe_interval_s == pytest.approx(2.002)


def test_a_divisor_too_far_below_the_cap_resamples_to_the_cap() -> None:
    planned = plan_ladder(DEFAULT_PROFILE, display_width=640, display_height=360, fps=35)
    assert (planned[0].fps, planned[0].fps_divisor, planned[0].gop_frames) == (30, None, 60)
    fifty = plan_ladder(DEFAULT_PROFILE, display_width=640, display_height=360, fps=50)
    assert (fifty[0].fps, fifty[0].fps_divisor, fifty[0].gop_frames) == (25, 2, 50)


def test_plan_rejects_nonsense_input() -> None:
    with pytest.raises(ValueError, match="frame rate"):
        plan_ladder(DEFAULT_PROFILE, display_width=640, display_height=360, fps=0)
    with pytest.raises(ValueError, match="display size"):
        plan_ladder(DEFAULT_PROFILE, display_width=0, display_height=360, fps=25)


def test_segments_must_hold_whole_gops() -> None:
    rungs = (Rung("720p", 720, 3_000_000),)
    assert Profile("ok", rungs, gop_s=2.0, segment_s=6.0).gops_per_segment == 3
    assert Profile("ok", rungs, gop_s=0.5, segment_s=2.0).gops_per_segment == 4
    with pytest.raises(ValueError, match="whole multiple of gop_s"):
        Profile("bad", rungs, gop_s=2.0, segment_s=5.0)
    with pytest.raises(ValueError, match="whole multiple of gop_s"):
        Profile("bad", rungs, gop_s=4.0, segment_s=2.0)


def test_profile_round_trips_through_json() -> None:
    data = json.loads(json.dumps(DEFAULT_PROFILE.to_dict()))
    assert profile_from_dict(data) == DEFAULT_PROFILE


def test_profile_from_dict_sorts_rungs_and_fills_defaults() -> None:
    profile = profile_from_dict(
        {
            "name": "small",
            "rungs": [
                {"name": "360p", "height": 360, "video_bitrate": 800_000},
                {"name": "720p", "height": 720, "video_bitrate": 2_500_000, "max_fps": 30},
            ],
        }
    )
    assert [r.name for r in profile.rungs] == ["720p", "360p"]
    assert profile.rungs[0].max_fps == 30.0
    assert (profile.audio_bitrate, profile.gop_s, profile.segment_s) == (128_000, 2.0, 6.0)


_RUNG = {"name": "720p", "height": 720, "video_bitrate": 3_000_000}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "profile must be an object"),
        ({"rungs": [_RUNG]}, "missing field"),
        ({"name": "x", "rungs": [_RUNG], "colour": "red"}, "unknown field"),
        ({"name": "x", "rungs": []}, "no rungs"),
        ({"name": "x", "rungs": "720p"}, "rungs must be a list"),
        ({"name": "x", "rungs": [{**_RUNG, "height": "720"}]}, "height must be an integer"),
        ({"name": "x", "rungs": [{**_RUNG, "height": True}]}, "height must be an integer"),
        ({"name": "x", "rungs": [{**_RUNG, "video_bitrate": 0}]}, "video_bitrate must be positive"),
        ({"name": "x", "rungs": [{**_RUNG, "max_fps": -1}]}, "max_fps must be positive"),
        ({"name": "x", "rungs": [_RUNG, {**_RUNG, "height": 360}]}, "names must be unique"),
        ({"name": "x", "rungs": [_RUNG], "segment_s": 5}, "whole multiple"),
        ({"name": "x", "rungs": [_RUNG], "gop_s": 0}, "must be positive"),
        ({"name": "x", "rungs": [_RUNG], "audio_bitrate": 1.5}, "must be an integer"),
    ],
)
def test_profile_from_dict_rejects(data, message) -> None:
    with pytest.raises(ValueError, match=message):
        profile_from_dict(data)
