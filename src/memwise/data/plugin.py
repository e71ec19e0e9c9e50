"""Plugins: what a data product is made from, and how.

A plugin class declares the names it ``provides`` (one, or several for a multi-output plugin
whose ``compute`` returns a dict), what it ``depends_on`` (names, optionally with a version
constraint such as ``"records>=1.0,<2"``), its ``version``, the structured ``dtype`` of each
output and a pydantic ``Config`` model. Config fields made with :func:`untracked` stay out of
the lineage: changing them never invalidates stored data.

A plugin without dependencies is a source: it lists its chunks' time ranges in
``chunk_ranges(run_id)`` and ``compute(run_id=, start=, end=)`` makes each one.

Hooks, in the order they run: ``on_register`` (class, when a registry takes it), ``setup``
(once per process that computes with it), ``validate_input``, ``compute`` and
``validate_output`` (per chunk), ``teardown`` (when that process is done with it) and
``on_unregister``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memwise.data.chunk import check_dtype
from memwise.errors import PluginError

if TYPE_CHECKING:
    from memwise.data.registry import Registry

__all__ = ["NoConfig", "Plugin", "untracked"]

Parallel = Literal["process", "thread", "none"]


def untracked(default: Any, **kwargs: Any) -> Any:
    """A config field that does not join the lineage (verbosity, buffer sizes, paths)."""
    return Field(default, json_schema_extra={"tracked": False}, **kwargs)


class NoConfig(BaseModel):
    """The config of a plugin that has no options."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Base class of every plugin; see the module documentation for the declarations."""

    provides: ClassVar[str | tuple[str, ...]]
    depends_on: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str] = "0.0.0"
    dtype: ClassVar[Any]  # one dtype, or a mapping of output name -> dtype
    Config: ClassVar[type[BaseModel]] = NoConfig
    # "process": chunks run on a WorkerPool; "thread": on threads (I/O-bound work);
    # "none": in the calling thread, in order.
    parallel: ClassVar[Parallel] = "process"
    # Whether the source of ``compute`` joins the lineage, so editing it invalidates data.
    track_source: ClassVar[bool] = False
    # Seconds one chunk may take in a worker before the worker is killed (process mode).
    chunk_timeout: ClassVar[float | None] = None
    # Whether the outputs are written to storage (False: recomputed whenever needed).
    save: ClassVar[bool] = True

    def __init__(self, config: BaseModel) -> None:
        # An instance of this plugin's Config; typed Any so plugins read their own fields.
        self.config: Any = config

    # ---- declarations, read by the registry --------------------------------------------

    @classmethod
    def outputs(cls) -> tuple[str, ...]:
        """The names this plugin provides, in declaration order."""
        provides = getattr(cls, "provides", None)
        if isinstance(provides, str):
            return (provides,)
        if not provides or not all(isinstance(p, str) and p for p in provides):
            raise PluginError(f"{cls.__qualname__}.provides must be a name or a tuple of names")
        return tuple(provides)

    @classmethod
    def output_dtypes(cls) -> dict[str, np.dtype]:
        """Each output's dtype, checked to be structured with ``time`` and ``endtime``."""
        names = cls.outputs()
        declared = getattr(cls, "dtype", None)
        if declared is None:
            raise PluginError(f"{cls.__qualname__} declares no dtype")
        if isinstance(declared, Mapping):
            missing = set(names) - set(declared)
            if missing:
                raise PluginError(f"{cls.__qualname__}.dtype has no entry for {sorted(missing)}")
            return {n: check_dtype(declared[n], f"{cls.__qualname__}[{n}]") for n in names}
        if len(names) > 1:
            raise PluginError(
                f"{cls.__qualname__} provides {names}: give dtype as a dict, one per output"
            )
        return {names[0]: check_dtype(declared, cls.__qualname__)}

    @classmethod
    def is_source(cls) -> bool:
        return not cls.depends_on

    @classmethod
    def tracked_config(cls, config: BaseModel) -> dict[str, Any]:
        """The config values that join the lineage (JSON-ready)."""
        dumped = config.model_dump(mode="json")
        return {
            name: dumped[name]
            for name, field in type(config).model_fields.items()
            if not (
                isinstance(field.json_schema_extra, dict)
                and field.json_schema_extra.get("tracked") is False
            )
        }

    @classmethod
    def make_config(cls, options: Mapping[str, Any]) -> BaseModel:
        """This plugin's config from a context's options: it takes the fields it declares."""
        fields = cls.Config.model_fields
        try:
            return cls.Config.model_validate({k: v for k, v in options.items() if k in fields})
        except Exception as exc:
            raise PluginError(f"invalid config for {cls.__qualname__}: {exc}") from exc

    # ---- hooks --------------------------------------------------------------------------

    @classmethod
    def on_register(cls, registry: Registry) -> None:
        """Called when ``registry`` takes this plugin."""

    @classmethod
    def on_unregister(cls, registry: Registry) -> None:
        """Called when ``registry`` lets this plugin go (or a newer one replaces it)."""

    def setup(self) -> None:
        """Called once in each process before its first chunk (load a model, open a file)."""

    def teardown(self) -> None:
        """Called once in each process that called ``setup``, when done with the plugin."""

    def validate_input(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Check one chunk's inputs before ``compute``; raise to refuse them."""

    def validate_output(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Check one chunk's outputs after ``compute``: dtypes and time order by default."""
        for name, dtype in self.output_dtypes().items():
            data = outputs[name]
            if data.dtype != dtype:
                raise PluginError(
                    f"{type(self).__qualname__} returned {name} with dtype {data.dtype}, "
                    f"but declares {dtype}"
                )
            times = data["time"]
            if len(times) > 1 and bool(np.any(times[1:] < times[:-1])):
                raise PluginError(
                    f"{type(self).__qualname__} returned {name} not sorted by time; sort it "
                    "(np.sort(x, order='time') or x[np.argsort(x['time'], kind='stable')])"
                )

    # ---- work ---------------------------------------------------------------------------

    def chunk_ranges(self, run_id: str) -> Iterable[tuple[int, int]]:
        """A source's chunks as touching ``(start, end)`` ranges in nanoseconds."""
        raise PluginError(f"{type(self).__qualname__} is a source but has no chunk_ranges()")

    def compute(self, **inputs: Any) -> np.ndarray | dict[str, np.ndarray]:
        """One chunk of output from one chunk of each input (keyword per dependency).

        Sources get ``run_id``, ``start`` and ``end`` instead. A multi-output plugin returns
        a dict with an array per name it provides.
        """
        raise NotImplementedError(f"{type(self).__qualname__} does not implement compute()")

    def run_compute(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """``validate_input`` → ``compute`` → ``validate_output``, outputs as a dict."""
        self.validate_input(inputs)
        result = self.compute(**inputs)
        names = self.outputs()
        if isinstance(result, Mapping):
            outputs = dict(result)
            if set(outputs) != set(names):
                raise PluginError(
                    f"{type(self).__qualname__}.compute returned {sorted(outputs)}, "
                    f"but provides {sorted(names)}"
                )
        elif len(names) == 1:
            outputs = {names[0]: result}
        else:
            raise PluginError(
                f"{type(self).__qualname__} provides {names}: compute must return a dict"
            )
        self.validate_output(outputs)
        return outputs
