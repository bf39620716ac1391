"""Ladder profiles as data: a JSON file beside the built-in default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingestd.media.ladder import DEFAULT_PROFILE, load_profiles, profile_key


def test_without_a_file_only_the_default_exists() -> None:
    assert load_profiles(None) == {"default": DEFAULT_PROFILE}


def test_a_file_adds_profiles_and_may_redefine_the_default(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    tiny = {"name": "tiny", "rungs": [{"name": "144p", "height": 144, "video_bitrate": 100_000}]}
    path.write_text(json.dumps({"profiles": [tiny]}))
    profiles = load_profiles(path)
    assert set(profiles) == {"default", "tiny"}
    assert [r.height for r in profiles["tiny"].rungs] == [144]
    redefined = {**tiny, "name": "default"}
    path.write_text(json.dumps([redefined]))
    assert [r.height for r in load_profiles(path)["default"].rungs] == [144]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "cannot read profiles"),
        ('{"profiles": 3}', "expected a list"),
        ('[{"name": "x", "rungs": [{"name": "a", "height": -1, "video_bitrate": 1}]}]', "height"),
    ],
)
def test_a_bad_file_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_profiles(path)


def test_the_key_changes_with_the_definition() -> None:
    tiny = load_profiles(None)["default"]
    assert profile_key(tiny) == profile_key(DEFAULT_PROFILE)
    changed = type(tiny)(name="default", rungs=tiny.rungs[:2])
    assert profile_key(changed) != profile_key(DEFAULT_PROFILE)
