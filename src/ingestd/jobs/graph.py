"""The job graph as data: frozen step specs, checked for cycles and unknown inputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ingestd.domain.states import DONE_ORDER_STATES, OrderState


@dataclass(frozen=True)
class StepSpec:
    name: str
    depends_on: tuple[str, ...] = ()
    queue: str = "default"
    max_attempts: int = 3
    # share of the asset's progress bar this step stands for; heavier steps are also
    # claimed first among ready ones, so the longest step starts as early as it can
    weight: float = 1.0
    content_key: str | None = None
    params: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Graph:
    steps: tuple[StepSpec, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate step names in graph: {names}")
        known = set(names)
        for s in self.steps:
            unknown = set(s.depends_on) - known
            if unknown:
                raise ValueError(f"step {s.name} depends on unknown steps {sorted(unknown)}")
        self.topological_order()  # raises on cycles

    def topological_order(self) -> list[str]:
        deps = {s.name: set(s.depends_on) for s in self.steps}
        order: list[str] = []
        while deps:
            free = sorted(n for n, d in deps.items() if not d)
            if not free:
                raise ValueError(f"cycle among steps {sorted(deps)}")
            for n in free:
                order.append(n)
                del deps[n]
            for d in deps.values():
                d.difference_update(free)
        return order


def is_ready(depends_on: Iterable[str], states: Mapping[str, OrderState]) -> bool:
    """A step may start once every input is done (succeeded or skipped).

    Inputs that are not part of the asset's orders at all count as done: a step
    enqueued later (by a hook) may name steps that finished in an earlier graph.
    """
    return all(states.get(dep, OrderState.SUCCEEDED) in DONE_ORDER_STATES for dep in depends_on)
