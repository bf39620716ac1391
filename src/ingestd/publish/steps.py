"""The ``publish:<target>`` step family, and the graph steps that publish an asset.

The worker runs an order named ``publish:<target name>`` with the ``publish:`` family's
step (the engine's "family:member" convention); the asset's owner is the target's owner.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.db.models import Asset, Target
from ingestd.errors import NotFound
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext
from ingestd.publish.service import STEP_FAMILY, PublicationService, publish_step

FILE_KINDS = ("directory", "s3", "ftp")


def publish_graph_steps(
    targets: Sequence[str], after: Sequence[str], *, max_attempts: int = 5
) -> list[StepSpec]:
    """One ``publish:<target>`` step per target name, each after every step in ``after``
    (so it runs once the asset's outputs exist). No content key: it always runs, and
    publishing is idempotent."""
    return [
        StepSpec(
            publish_step(name),
            depends_on=tuple(after),
            queue="default",
            max_attempts=max_attempts,
            weight=0.5,
        )
        for name in targets
    ]


def with_publish(graph: Graph, targets: Sequence[str]) -> Graph:
    """``graph`` with publish steps for ``targets`` after all of its steps."""
    if not targets:
        return graph
    names = [s.name for s in graph.steps]
    return Graph((*graph.steps, *publish_graph_steps(targets, names)))


def auto_targets(session: Session, owner_id: str) -> list[str]:
    """The owner's enabled file targets (directory, s3, ftp) whose config says
    ``auto: true``, by name. Catalog targets have their own ``catalog:`` steps."""
    rows = session.scalars(
        select(Target).where(
            Target.owner_id == owner_id,
            Target.enabled.is_(True),
            Target.kind.in_(FILE_KINDS),
        )
    )
    return sorted(t.name for t in rows if t.config.get("auto") is True)


class PublishSteps:
    def __init__(self, publications: PublicationService, timeout_s: float | None = None) -> None:
        self.publications = publications
        self.timeout_s = timeout_s

    def steps(self) -> dict[str, Step]:
        return {f"{STEP_FAMILY}:": Step(self.publish, timeout_s=self.timeout_s)}

    async def publish(self, ctx: StepContext) -> Outcome:
        target_name = ctx.claim.step.split(":", 1)[1]
        asset_id = ctx.claim.asset_id

        def owner(session: Session) -> tuple[str, bool]:
            asset = session.get_one(Asset, asset_id)
            exists = session.scalars(
                select(Target.id).where(
                    Target.owner_id == asset.owner_id,
                    Target.name == target_name,
                    Target.enabled.is_(True),
                )
            ).first()
            return asset.owner_id, exists is not None

        owner_id, present = await ctx.read(owner)
        if not present:  # removed or disabled since the order was made: nothing to do
            return Outcome({"target": target_name, "skipped": "target removed or disabled"})
        try:
            report = await self.publications.publish(owner_id, asset_id, target_name)
        except NotFound as exc:  # removed meanwhile
            return Outcome({"target": target_name, "skipped": exc.message})
        summary = report.to_dict()
        summary.pop("objects")
        return Outcome(summary)
