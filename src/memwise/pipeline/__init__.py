"""Ordered multi-stage pipelines over threads or WorkerPool processes.

Items from a source (iterable, async iterable, or pushed with ``put``) go through stages; each
stage runs its function on several items at once (threads of this process, or tasks on a
``WorkerPool``) and may finish them out of order; results come out in source order. A new item
enters only when there is room, so memory is bounded by the capacity, and nothing is dropped
unless a ``drop=`` policy says so (and then every drop is counted). See docs/pipeline.md.
"""

from __future__ import annotations

from memwise.pipeline.api import Pipeline
from memwise.pipeline.snapshot import PipelineSnapshot, StageSnapshot
from memwise.pipeline.stage import ItemError, Stage, Submits

__all__ = ["ItemError", "Pipeline", "PipelineSnapshot", "Stage", "StageSnapshot", "Submits"]
