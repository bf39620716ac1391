from __future__ import annotations

import itertools

import pytest

from ingestd.domain.states import (
    AssetStatus,
    OrderState,
    SourceStatus,
    can_transition,
    check_transition,
)
from ingestd.errors import InvalidState


def test_source_follows_the_documented_path() -> None:
    path = [
        SourceStatus.UPLOADING,
        SourceStatus.UPLOADED,
        SourceStatus.VALIDATING,
        SourceStatus.INGESTED,
    ]
    for current, new in itertools.pairwise(path):
        assert check_transition(current, new) == new
    assert can_transition(SourceStatus.VALIDATING, SourceStatus.REJECTED)


def test_asset_path_and_terminal_failures() -> None:
    assert can_transition(AssetStatus.CREATED, AssetStatus.INGESTING)
    assert can_transition(AssetStatus.INGESTING, AssetStatus.PROCESSING)
    assert can_transition(AssetStatus.PROCESSING, AssetStatus.READY)
    assert not can_transition(AssetStatus.CREATED, AssetStatus.READY)
    assert not can_transition(AssetStatus.ABANDONED, AssetStatus.PROCESSING)


def test_illegal_transition_names_both_states() -> None:
    with pytest.raises(InvalidState) as info:
        check_transition(SourceStatus.INGESTED, SourceStatus.UPLOADING)
    assert "ingested" in info.value.message and "uploading" in info.value.message


def test_finished_orders_are_final() -> None:
    for final in (
        OrderState.SUCCEEDED,
        OrderState.FAILED,
        OrderState.CANCELLED,
        OrderState.SKIPPED,
    ):
        assert not any(can_transition(final, other) for other in OrderState)
    assert can_transition(OrderState.RUNNING, OrderState.READY)  # retry
