"""Plugin discovery: QEMU's module_init + modinfo, over Python entry points.

A plugin distribution declares, in its entry points,

* ``[vfw.plugins] <name> = <module>``: its plugin module, which sets ``VFW_API = "1.0"`` (the
  core API it targets) and may hold pluggy hook implementations;
* ``[vfw.types] <type-name> = <module>``: for every type it provides, the module whose import
  registers it (QEMU's modinfo: which module provides which type).

Resolving one type name imports only the distribution that declares it; listing imports all.
Scanning every installed distribution's metadata costs time proportional to how many there are,
so the index of entry points is cached on disk, keyed by the modification times of the
directories on ``sys.path`` (an install or uninstall changes them). With a warm cache, finding a
type costs a stat per ``sys.path`` entry and one small JSON read, whatever the number of plugins.

Users disable plugins the way pytest does: ``VFW_DISABLE_PLUGIN_AUTOLOAD=1`` (then only plugins
named in ``VFW_PLUGINS`` load), ``VFW_DISABLE_PLUGINS=vfw-accel-kvm,...``, or the matching
``vfw`` options.
"""

from __future__ import annotations

import importlib
import marshal
import os
import re
import sys
import zlib
from collections.abc import Iterable
from typing import Any

from . import API_VERSION, __version__
from .errors import PluginError, TypeLookupError
from .qom import TABLE, Provider, TypeImpl, TypeTable

GROUP_PLUGINS = "vfw.plugins"
GROUP_TYPES = "vfw.types"
CORE_DISTRIBUTION = "vfw-core"

#: The distributions this project ships, by the type names they provide, so that a user asking
#: for one that is not installed is told what to install (QEMU's users complain it doesn't).
KNOWN_PROVIDERS: tuple[tuple[str, str], ...] = (
    (r"kvm-accel", "vfw-accel-kvm"),
    (r"tcg-accel", "vfw-accel-tcg"),
    (r"(pc|pc-i440fx-.*|q35|pc-q35-.*)-machine|.*-x86_64-cpu", "vfw-board-pc"),
    (r"isa-.*|i440FX.*|PIIX.*|fw_cfg.*|i8042|mc146818rtc|ioapic|apic|kvm-.*", "vfw-board-pc"),
    (r"virtio-.*", "vfw-dev-virtio"),
)


def known_provider(type_name: str) -> str | None:
    """Which of our distributions would provide ``type_name``, if it is one of ours."""
    for pattern, dist in KNOWN_PROVIDERS:
        if re.fullmatch(pattern, type_name):
            return dist
    return None


class PluginDist:
    """One installed plugin distribution as its entry points describe it."""

    def __init__(self, name: str, version: str, plugin_module: str | None,
                 types: dict[str, str]):
        self.name = name
        self.version = version
        self.plugin_module = plugin_module
        self.types = types  # type name -> module
        self.disabled = False
        self.state = "not loaded"  # "not loaded" | "loaded" | "error" | "disabled"
        self.error: str | None = None
        self.plugin: Any = None  # the imported plugin module
        self.registered: list[str] = []

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def packages(self) -> set[str]:
        mods = list(self.types.values()) + ([self.plugin_module] if self.plugin_module else [])
        return {m.split(".")[0] for m in mods}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# -- the entry-point index --------------------------------------------------------------------
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _crc(text: str) -> str:
    data = text.encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def _fingerprint() -> str:
    """Changes whenever a distribution is installed or removed on sys.path (the directories'
    modification times change). The script's own directory (or the working directory, for
    ``python -m``/``-c``) is left out: creating a file there must not cost a rescan."""
    parts = [sys.version, __version__]
    script_dir = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    for i, entry in enumerate(sys.path):
        if i == 0 and entry in ("", os.getcwd(), script_dir):
            continue
        try:
            parts.append(f"{entry}:{os.stat(entry or '.').st_mtime_ns}")
        except OSError:
            parts.append(f"{entry}:-")
    return _crc("\n".join(parts))


def _cache_dir() -> str | None:
    if os.environ.get("VFW_NO_PLUGIN_CACHE"):
        return None
    base = os.environ.get("VFW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vfw")
    return os.path.join(base, f"plugin-index-{_crc(sys.prefix + chr(0) + chr(0).join(sys.path))}")


def scan_entry_points() -> list[dict[str, Any]]:
    """Read every installed distribution's vfw entry points (the slow, uncached path)."""
    from importlib.metadata import distributions

    seen: set[str] = set()
    found = []
    for dist in distributions():
        try:
            name = dist.metadata["Name"]
        except Exception:  # a broken metadata directory must not stop discovery
            continue
        if not name or _norm(name) in seen:
            continue
        seen.add(_norm(name))
        plugin_module = None
        types: dict[str, str] = {}
        for ep in dist.entry_points:
            if ep.group == GROUP_TYPES:
                types[ep.name] = ep.value.split(":")[0].strip()
            elif ep.group == GROUP_PLUGINS:
                plugin_module = ep.value.split(":")[0].strip()
        if plugin_module or types:
            found.append({"name": name, "version": dist.version,
                          "plugin_module": plugin_module, "types": types})
    found.sort(key=lambda d: str(d["name"]))
    return found


class PluginIndex:
    """The entry-point index, cached on disk so that a warm lookup reads one small file.

    Layout: ``<cache>/plugin-index-<sys.path key>/<fingerprint>/all`` holds every entry and
    ``.../types/<type-name>`` the entry of the distribution declaring that type (marshal).
    A lookup with a warm cache costs one stat per sys.path entry and one file read, whatever
    the number of installed plugins; a stale fingerprint rebuilds the whole index once.
    """

    def __init__(self, entries: list[dict[str, Any]] | None = None):
        self._entries = entries
        self._dir: str | None = None
        if entries is None:
            base = _cache_dir()
            self._dir = None if base is None else os.path.join(base, _fingerprint())

    def all(self) -> list[dict[str, Any]]:
        if self._entries is None:
            if self._dir is not None:
                try:
                    with open(os.path.join(self._dir, "all"), "rb") as f:
                        self._entries = list(marshal.load(f))
                except (OSError, ValueError, EOFError, TypeError):
                    pass
            if self._entries is None:
                self._entries = scan_entry_points()
                self._write(self._entries)
        return self._entries

    def lookup(self, type_name: str) -> dict[str, Any] | None:
        """The entry of the distribution that declares ``type_name``, or None."""
        if self._entries is None and self._dir is not None and _SAFE_NAME.match(type_name):
            try:
                with open(os.path.join(self._dir, "types", type_name), "rb") as f:
                    return dict(marshal.load(f))
            except FileNotFoundError:
                if os.path.exists(os.path.join(self._dir, "all")):
                    return None  # a valid index that has no such type
            except (OSError, ValueError, EOFError, TypeError):
                pass
        for entry in self.all():
            if type_name in entry["types"]:
                return entry
        return None

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if self._dir is None:
            return
        import shutil
        tmp = f"{self._dir}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.join(tmp, "types"), exist_ok=True)
            for entry in entries:
                for type_name in entry["types"]:
                    if _SAFE_NAME.match(type_name):
                        with open(os.path.join(tmp, "types", type_name), "wb") as f:
                            marshal.dump(entry, f)
            with open(os.path.join(tmp, "all"), "wb") as f:
                marshal.dump(entries, f)
            os.rename(tmp, self._dir)
        except OSError:  # an unwritable cache (or a concurrent writer) only costs speed
            shutil.rmtree(tmp, ignore_errors=True)
            return
        parent = os.path.dirname(self._dir)
        for old in os.listdir(parent):  # drop indexes of earlier installs
            if os.path.join(parent, old) != self._dir and not old.endswith(".tmp"):
                shutil.rmtree(os.path.join(parent, old), ignore_errors=True)


def _env_list(name: str) -> set[str]:
    return {_norm(x) for x in os.environ.get(name, "").replace(",", " ").split()}


# -- the loader ------------------------------------------------------------------------------
class ModuleLoader:
    """Imports plugin modules on demand and checks each plugin keeps its declared contract."""

    def __init__(self, table: TypeTable = TABLE, *, autoload: bool | None = None,
                 disabled: Iterable[str] = (), enabled: Iterable[str] = (),
                 index: list[dict[str, Any]] | None = None):
        self.table = table
        if autoload is None:
            autoload = not os.environ.get("VFW_DISABLE_PLUGIN_AUTOLOAD")
        self.autoload = autoload
        self.disabled = {_norm(d) for d in disabled} | _env_list("VFW_DISABLE_PLUGINS")
        self.enabled = {_norm(e) for e in enabled} | _env_list("VFW_PLUGINS")
        #: The distributions met so far (all of them once a listing asked for the full index).
        self.dists: dict[str, PluginDist] = {}
        self.by_type: dict[str, PluginDist] = {}
        self._by_package: dict[str, PluginDist] = {}
        self._index = PluginIndex(index)
        self._indexed = False
        self._hooks: Any = None

    def install(self) -> ModuleLoader:
        """Make this loader the one the type table asks (call once per process or test)."""
        self.table.loader = self.load_type
        self.table.load_all = self.load_all
        self.table.provider_for_module = self.provider_for_module
        self.table.on_register.append(self._check_registration)
        return self

    # -- index ------------------------------------------------------------------------------
    def _add(self, entry: dict[str, Any]) -> PluginDist:
        """The PluginDist for an index entry, created on first sight."""
        key = _norm(entry["name"])
        dist = self.dists.get(key)
        if dist is not None:
            return dist
        dist = PluginDist(entry["name"], entry["version"], entry.get("plugin_module"),
                          dict(entry.get("types", {})))
        if key == CORE_DISTRIBUTION:
            dist.state = "loaded"
        elif key in self.disabled or (not self.autoload and key not in self.enabled):
            dist.disabled, dist.state = True, "disabled"
        self.dists[key] = dist
        for type_name in dist.types:
            self.by_type.setdefault(type_name, dist)
        for pkg in dist.packages:
            self._by_package.setdefault(pkg, dist)
        return dist

    def _ensure_index(self) -> None:
        """Materialise every installed distribution (listings need them all)."""
        if not self._indexed:
            self._indexed = True
            for entry in self._index.all():
                self._add(entry)

    def distributions(self) -> list[PluginDist]:
        self._ensure_index()
        return sorted(self.dists.values(), key=lambda d: d.name)

    def provider_of(self, type_name: str) -> PluginDist | None:
        dist = self.by_type.get(type_name)
        if dist is None and not self._indexed:
            entry = self._index.lookup(type_name)
            dist = self._add(entry) if entry is not None else None
        return dist

    def provider_for_module(self, module: str) -> Provider:
        package = module.split(".")[0]
        if package == "vfw":
            return Provider(CORE_DISTRIBUTION, __version__, module)
        dist = self._by_package.get(package)
        if dist is None:
            self._ensure_index()
            dist = self._by_package.get(package)
        if dist is None:
            return Provider(None, None, module)
        return Provider(dist.name, dist.version, module)

    # -- loading ----------------------------------------------------------------------------
    def _check_registration(self, impl: TypeImpl) -> str | None:
        dist = self.dists.get(_norm(impl.provider.distribution or ""))
        if dist is None:
            return None
        if impl.name in dist.types:
            dist.registered.append(impl.name)
            return None
        dist.error = (f"plugin {dist.label} registers type '{impl.name}' that its entry points"
                      f" do not declare (module {impl.provider.module})")
        return dist.error

    def _import_plugin_module(self, dist: PluginDist) -> None:
        if dist.plugin is not None or not dist.plugin_module:
            if not dist.plugin_module and dist.state == "not loaded":
                raise PluginError(f"plugin {dist.label} has no [vfw.plugins] entry point")
            return
        try:
            module = importlib.import_module(dist.plugin_module)
        except Exception as exc:
            raise PluginError(f"plugin {dist.label} failed to load module "
                              f"'{dist.plugin_module}': {type(exc).__name__}: {exc}") from exc
        check_api(dist, getattr(module, "VFW_API", None))
        dist.plugin = module

    def _load_dist_module(self, dist: PluginDist, module: str) -> None:
        """Import one module of ``dist`` with its contract checked; errors stick to ``dist``."""
        if dist.disabled:
            raise PluginError(f"plugin {dist.label} is disabled")
        if dist.state == "error":
            raise PluginError(dist.error or f"plugin {dist.label} failed to load")
        try:
            self._import_plugin_module(dist)
            importlib.import_module(module)
        except PluginError as exc:
            dist.state, dist.error = "error", str(exc)
            raise
        except Exception as exc:
            dist.state = "error"
            dist.error = (f"plugin {dist.label} failed to load module '{module}':"
                          f" {type(exc).__name__}: {exc}")
            raise PluginError(dist.error) from exc
        if dist.state != "error":
            dist.state = "loaded"

    def load_type(self, type_name: str) -> bool:
        """Import the module that provides ``type_name``; True if one was imported."""
        dist = self.provider_of(type_name)
        if dist is None:
            return False
        if dist.disabled:
            raise TypeLookupError(
                f"type '{type_name}' is provided by {dist.label}, which is disabled"
                " (VFW_DISABLE_PLUGINS / VFW_DISABLE_PLUGIN_AUTOLOAD or --disable-plugin)")
        self._load_dist_module(dist, dist.types[type_name])
        self._check_declared(dist, type_name)
        return True

    def load_all(self, only: str | None = None) -> list[PluginError]:
        """Import every enabled plugin's type modules (or, with ``only``, the modules of types
        whose names end with that suffix: QEMU's ``-machine`` / ``-accel`` naming lets listings
        load just the plugins that can answer them). Errors are collected, not raised."""
        self._ensure_index()
        errors = []
        for dist in self.distributions():
            if dist.disabled:
                continue
            wanted = [t for t in dist.types if only is None or t.endswith(only)]
            try:
                for module in dict.fromkeys(dist.types[t] for t in wanted):
                    self._load_dist_module(dist, module)
                for type_name in wanted:
                    if self.by_type.get(type_name) is dist:
                        self._check_declared(dist, type_name)
            except PluginError as exc:
                errors.append(exc)
        return errors

    def _check_declared(self, dist: PluginDist, type_name: str) -> None:
        if type_name not in self.table.registered_names() and type_name not in self.table.rejected:
            dist.state = "error"
            dist.error = (f"plugin {dist.label} declares type '{type_name}' but its module"
                          f" '{dist.types[type_name]}' does not register it")
            raise PluginError(dist.error)

    # -- behaviour hooks ---------------------------------------------------------------------
    def hooks(self) -> Any:
        """The pluggy hook relay with every enabled plugin module registered."""
        if self._hooks is None:
            import pluggy

            from . import hookspecs

            pm = pluggy.PluginManager("vfw")
            pm.add_hookspecs(hookspecs)
            for dist in self.distributions():
                if dist.disabled or not dist.plugin_module:
                    continue
                try:
                    self._import_plugin_module(dist)
                except PluginError as exc:
                    dist.state, dist.error = "error", str(exc)
                    continue
                if pm.get_plugin(dist.name) is None:
                    pm.register(dist.plugin, name=dist.name)
            self._hooks = pm
        return self._hooks.hook


def check_api(dist: PluginDist, declared: Any) -> None:
    """Refuse a plugin that targets an API this core does not provide."""
    want = ".".join(map(str, API_VERSION))
    try:
        major, minor = (int(x) for x in str(declared).split("."))
    except ValueError:
        raise PluginError(f"plugin {dist.label} does not declare the vfw API it targets"
                          f" (VFW_API = \"{want}\" in module '{dist.plugin_module}')") from None
    if major != API_VERSION[0] or minor > API_VERSION[1]:
        raise PluginError(f"plugin {dist.label} targets vfw API {major}.{minor}, but vfw-core"
                          f" {__version__} provides API {want}")


_loader: ModuleLoader | None = None


def loader() -> ModuleLoader:
    """The process's loader, installed on first use with settings from the environment."""
    global _loader
    if _loader is None:
        _loader = ModuleLoader().install()
    return _loader


def configure(*, autoload: bool | None = None, disabled: Iterable[str] = (),
              enabled: Iterable[str] = ()) -> ModuleLoader:
    """Replace the process's loader (the CLI calls this with its plugin options)."""
    global _loader
    if _loader is not None:
        TABLE.on_register.remove(_loader._check_registration)
    _loader = ModuleLoader(autoload=autoload, disabled=disabled, enabled=enabled).install()
    return _loader


def missing_type_hint(type_name: str) -> str:
    """A sentence telling the user what to install for ``type_name``, or ''."""
    dist = known_provider(type_name)
    if dist is None:
        return ""
    installed = loader().dists.get(_norm(dist)) or next(
        (d for d in loader().distributions() if _norm(d.name) == _norm(dist)), None)
    if installed is not None:  # ours and installed, but this version has no such type
        return f" ({installed.label} is installed but does not provide it)"
    return f" (provided by {dist}, which is not installed: pip install {dist})"
