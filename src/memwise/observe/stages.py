"""Pipeline stages as observers see them: a duck-typed shape, read without importing pipelines.

A pipeline is anything whose ``snapshot()`` returns an object with ``stages``, each stage
carrying the fields of :class:`StageLike`. Reading them through this protocol keeps ``observe``
below ``pipeline`` in the layering while still showing whatever pipeline object a user has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol


class StageLike(Protocol):
    """One stage of a pipeline at one moment."""

    name: str
    workers: int
    capacity: int  # room of its input queue
    depth: int  # items waiting in its input queue
    done: int  # items it has finished
    rate: float  # items per second, recent
    busy_percent: float  # share of its workers' time spent working, 0-100
    errors: int
    drops: int  # items dropped by a drop policy


class PipelineSnapshotLike(Protocol):
    @property
    def stages(self) -> Sequence[StageLike]: ...


class PipelineLike(Protocol):
    def snapshot(self) -> PipelineSnapshotLike: ...


STAGE_FIELDS = ("workers", "capacity", "depth", "done", "rate", "busy_percent", "errors", "drops")

Pipelines = Mapping[str, PipelineLike] | Iterable[PipelineLike]


def named(pipelines: Pipelines) -> dict[str, PipelineLike]:
    """Pipelines by name: a mapping keeps its keys; otherwise a pipeline's (or its snapshot's)
    ``name``, or ``pipeline<i>`` when it has none."""
    if isinstance(pipelines, Mapping):
        return dict(pipelines)
    by_name: dict[str, PipelineLike] = {}
    for index, pipeline in enumerate(pipelines):
        name = getattr(pipeline, "name", None) or getattr(pipeline.snapshot(), "name", None)
        by_name[str(name) if name else f"pipeline{index}"] = pipeline
    return by_name


def stage_rows(pipelines: Mapping[str, PipelineLike]) -> list[dict[str, Any]]:
    """One JSON-ready dict per pipeline: ``{"name": ..., "stages": [{name, workers, ...}]}``."""
    rows = []
    for name, pipeline in pipelines.items():
        stages = [
            {"name": str(stage.name), **{f: getattr(stage, f) for f in STAGE_FIELDS}}
            for stage in pipeline.snapshot().stages
        ]
        rows.append({"name": name, "stages": stages})
    return rows
