"""The registry: which plugin provides which data name, and the order to compute them in.

Plugins arrive by explicit registration, from entry points (group ``memwise.plugins``; an
entry point names a plugin class, a list of them, or a module whose plugin classes are
taken) or from a directory of ``.py`` files. A plugin that fails to import or declares
itself wrongly lands in :meth:`Registry.failed_plugins` with its error; the others load.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from memwise.data.plugin import Plugin
from memwise.errors import DependencyError, PluginError

__all__ = ["ENTRY_POINT_GROUP", "Dependency", "Registry", "parse_dependency"]

ENTRY_POINT_GROUP = "memwise.plugins"
# Modules loaded from plugin directories live under this prefix in sys.modules.
DIRECTORY_PREFIX = "memwise_plugins_dir"


@dataclass(frozen=True)
class Dependency:
    """One entry of ``depends_on``: a data name and the versions of its plugin it accepts."""

    name: str
    specifier: str  # "" accepts any version

    def accepts(self, version: str) -> bool:
        if not self.specifier:
            return True
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return SpecifierSet(self.specifier).contains(Version(version), prereleases=True)


def parse_dependency(text: str, owner: str) -> Dependency:
    """``"records>=1.0,<2"`` → Dependency("records", ">=1.0,<2")."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise PluginError(f"{owner}: bad dependency {text!r}: {exc}") from None
    return Dependency(requirement.name, str(requirement.specifier))


class Registry:
    """Data name → plugin class, with discovery and planning. Thread-safe."""

    def __init__(self, plugins: Iterable[type[Plugin]] = ()) -> None:
        self._lock = threading.RLock()
        self._providers: dict[str, type[Plugin]] = {}
        self._failed: dict[str, str] = {}
        # Bumped on every change, so that caches of plans and lineages know when to drop.
        self.generation = 0
        for plugin in plugins:
            self.register(plugin)

    # ---- membership ---------------------------------------------------------------------

    def register(self, plugin: type[Plugin]) -> type[Plugin]:
        """Take ``plugin`` (usable as a class decorator); a plugin providing a name already
        provided replaces the old one, whose ``on_unregister`` runs first."""
        if not (isinstance(plugin, type) and issubclass(plugin, Plugin)):
            raise PluginError(f"{plugin!r} is not a subclass of memwise.data.Plugin")
        plugin.output_dtypes()  # raises PluginError on a bad declaration
        for text in plugin.depends_on:
            parse_dependency(text, plugin.__qualname__)
        from packaging.version import InvalidVersion, Version

        try:
            Version(plugin.version)
        except InvalidVersion:
            raise PluginError(
                f"{plugin.__qualname__}.version {plugin.version!r} is not a version ('1.2.0')"
            ) from None
        with self._lock:
            for old in {self._providers[n] for n in plugin.outputs() if n in self._providers}:
                if old is not plugin:
                    self.unregister(old)
            for name in plugin.outputs():
                self._providers[name] = plugin
            self.generation += 1
        plugin.on_register(self)
        return plugin

    def unregister(self, plugin: type[Plugin] | str) -> None:
        """Let go of a plugin (given as its class or one of its names)."""
        with self._lock:
            cls = self.provider(plugin) if isinstance(plugin, str) else plugin
            names = [n for n, p in self._providers.items() if p is cls]
            if not names:
                raise DependencyError(f"{cls.__qualname__} is not registered")
            for name in names:
                del self._providers[name]
            self.generation += 1
        cls.on_unregister(self)

    def provider(self, name: str) -> type[Plugin]:
        """The plugin that provides ``name``."""
        with self._lock:
            try:
                return self._providers[name]
            except KeyError:
                known = ", ".join(sorted(self._providers)) or "none"
                raise DependencyError(
                    f"no plugin provides {name!r} (provided: {known}); register one"
                ) from None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._providers)

    def failed_plugins(self) -> dict[str, str]:
        """Where each plugin that could not load came from → its error."""
        with self._lock:
            return dict(self._failed)

    # ---- discovery ----------------------------------------------------------------------

    def discover_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[type[Plugin]]:
        """Register the plugins of every installed distribution's ``group`` entry points."""
        from importlib.metadata import entry_points

        found: list[type[Plugin]] = []
        for entry in entry_points(group=group):
            where = f"entry point {entry.name} = {entry.value}"
            try:
                found += self._register_all(_plugins_in(entry.load()), where)
            except Exception as exc:
                self._fail(where, exc)
        return found

    def discover_directory(self, path: str | Path) -> list[type[Plugin]]:
        """Register the plugins defined in each ``*.py`` file of ``path`` (sorted by name)."""
        found: list[type[Plugin]] = []
        for file in sorted(Path(path).glob("*.py")):
            try:
                module = load_file(file)
                found += self._register_all(_plugins_in(module), str(file))
            except Exception as exc:
                self._fail(str(file), exc)
        return found

    def _register_all(self, plugins: list[type[Plugin]], where: str) -> list[type[Plugin]]:
        done = []
        for plugin in plugins:
            try:
                done.append(self.register(plugin))
            except Exception as exc:
                self._fail(f"{where}: {plugin.__qualname__}", exc)
        return done

    def _fail(self, where: str, exc: BaseException) -> None:
        with self._lock:
            self._failed[where] = f"{type(exc).__name__}: {exc}"

    # ---- planning -----------------------------------------------------------------------

    def plan(self, target: str) -> list[type[Plugin]]:
        """The plugins ``target`` needs, each after those it depends on.

        Raises DependencyError naming the plugins when a dependency is missing, its
        provider's version is outside the constraint, or dependencies form a cycle.
        """
        with self._lock:
            order: list[type[Plugin]] = []
            state: dict[type[Plugin], str] = {}
            self._visit(self.provider(target), order, state, [])
            return order

    def _visit(
        self,
        plugin: type[Plugin],
        order: list[type[Plugin]],
        state: dict[type[Plugin], str],
        path: list[str],
    ) -> None:
        if state.get(plugin) == "done":
            return
        if state.get(plugin) == "visiting":
            cycle = " -> ".join([*path, plugin.__qualname__])
            raise DependencyError(f"dependency cycle: {cycle}; break it in one of these plugins")
        state[plugin] = "visiting"
        for text in plugin.depends_on:
            dependency = parse_dependency(text, plugin.__qualname__)
            provider = self.provider(dependency.name)
            if not dependency.accepts(provider.version):
                raise DependencyError(
                    f"{plugin.__qualname__} needs {text!r} but {provider.__qualname__} "
                    f"provides {dependency.name} at version {provider.version}; register a "
                    "matching version or relax the constraint"
                )
            self._visit(provider, order, state, [*path, plugin.__qualname__])
        state[plugin] = "done"
        order.append(plugin)


def _plugins_in(obj: Any) -> list[type[Plugin]]:
    """The plugin classes an entry point or module stands for."""
    if isinstance(obj, type) and issubclass(obj, Plugin):
        return [obj]
    if isinstance(obj, ModuleType):
        return [
            value
            for value in vars(obj).values()
            if inspect.isclass(value)
            and issubclass(value, Plugin)
            and value.__module__ == obj.__name__
            and "provides" in vars(value)
        ]
    if isinstance(obj, (list, tuple)):
        return [p for item in obj for p in _plugins_in(item)]
    raise PluginError(f"{obj!r} is neither a plugin class, a list of them nor a module")


def module_name_for(file: Path) -> str:
    """The sys.modules name a plugin file is loaded under (stable across processes)."""
    import hashlib

    digest = hashlib.blake2b(str(file.resolve()).encode(), digest_size=6).hexdigest()
    return f"{DIRECTORY_PREFIX}_{digest}_{file.stem}"


def load_file(file: Path) -> ModuleType:
    """Import a plugin file under :func:`module_name_for` (once per process)."""
    name = module_name_for(file)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__memwise_plugin_file__"] = str(file.resolve())
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
