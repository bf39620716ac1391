from __future__ import annotations

import random

import pytest

from ingestd.domain.states import OrderState
from ingestd.jobs.engine import Backoff
from ingestd.jobs.graph import Graph, StepSpec, is_ready


def test_topological_order_respects_inputs() -> None:
    g = Graph((StepSpec("package", ("a", "b")), StepSpec("a"), StepSpec("b", ("a",))))
    order = g.topological_order()
    assert order.index("a") < order.index("b") < order.index("package")


def test_cycles_and_unknown_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        Graph((StepSpec("a", ("b",)), StepSpec("b", ("a",))))
    with pytest.raises(ValueError, match="unknown"):
        Graph((StepSpec("a", ("missing",)),))
    with pytest.raises(ValueError, match="duplicate"):
        Graph((StepSpec("a"), StepSpec("a")))


def test_ready_only_when_all_inputs_done() -> None:
    states = {"a": OrderState.SUCCEEDED, "b": OrderState.RUNNING, "c": OrderState.SKIPPED}
    assert is_ready(["a", "c"], states)
    assert not is_ready(["a", "b"], states)
    assert not is_ready(["a"], {"a": OrderState.FAILED})
    assert is_ready([], {})


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    b = Backoff(base_s=2, cap_s=60)
    rng = random.Random(7)
    for attempt, raw in [(1, 2), (2, 4), (3, 8), (10, 60)]:
        for _ in range(50):
            d = b.delay(attempt, rng)
            assert 0.5 * raw <= d < 1.5 * raw
