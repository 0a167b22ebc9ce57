"""Registries that check their input (STYLE.md #3), and the way in for code that lives outside bench.

A registry maps a short name to an entry (a family class, a dataset loader, a metric's metadata).
Built-ins are registered explicitly by the module that defines them. Registering a duplicate or
malformed name is a programming error (``ValueError``); looking up an unknown name is a user error
(``BenchError``) that lists the accepted choices.

A registry created with an ``adapt`` function also resolves names it was never told about, so a
user benchmarks their own model, metric or data without editing bench:

* an **import path** ``package.module:Object`` (``family: "mypkg.models:MyVAE"`` in a suite);
* a name that an installed distribution declares in the registry's **entry-point group**
  (``bench.families``, ``bench.evaluators``, ``bench.datasets``), e.g. in its ``pyproject.toml``::

      [project.entry-points."bench.families"]
      tiny_vae = "mypkg.models:TinyVAE"

The imported object goes through ``adapt(obj, where)``, which checks that it satisfies the
interface and turns it into the registry's entry; anything wrong (module missing, attribute
missing, wrong kind of object, required methods missing) is a one-line ``BenchError`` naming what
is missing. ``check_class`` is the common check: a subclass of the interface's base class that
defines every name the base lists in ``required``.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from typing import Any, Callable, Generic, Iterator, TypeVar

from bench.errors import BenchError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # package.module:Object[.Attribute]
_ABSENT = object()


class Registry(Generic[T]):
    """Short names -> entries; optionally also import paths and an entry-point group (module docstring).

    ``adapt(obj, where) -> T`` turns an object imported from outside bench into an entry, raising
    ``BenchError`` when it does not fit; ``where`` says where it came from, for messages.
    """

    def __init__(self, kind: str, group: str | None = None, adapt: Callable[[Any, str], T] | None = None):
        self.kind = kind  # "family", "dataset", "metric"; used in messages
        self.group = group  # entry-point group, e.g. "bench.families"; None = built-ins only
        self._adapt = adapt
        self._items: dict[str, T] = {}  # registered explicitly (the built-ins)
        self._resolved: dict[str, T] = {}  # import paths and entry points, loaded once per process

    def register(self, name: str, obj: T) -> T:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must match {_NAME.pattern}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The entry for a registered name, an import path or an installed entry point."""
        if name in self._items:
            return self._items[name]
        if name in self._resolved:
            return self._resolved[name]
        if self._adapt is not None and ":" in name:
            entry = self._adapt(import_object(name, self.kind), repr(name))
        elif self._adapt is not None and self.group is not None and (ep := self._entry_point(name)) is not None:
            where = f"{name!r} (entry point {ep.value!r} in group {self.group} of {_dist_name(ep)})"
            entry = self._adapt(_load_entry_point(ep, self.kind, where), where)
        else:
            raise BenchError(self._unknown(name))
        self._resolved[name] = entry
        return entry

    def _unknown(self, name: str) -> str:
        msg = f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
        if self._adapt is not None:
            msg += " (or an import path package.module:Object"
            msg += f", or a name an installed package declares in the entry-point group {self.group})" if self.group else ")"
        return msg

    def entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """Installed entry points of this registry's group, by name (nothing is imported)."""
        if self.group is None:
            return {}
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=self.group):
            found.setdefault(ep.name, ep)
        return found

    def _entry_point(self, name: str) -> importlib.metadata.EntryPoint | None:
        # the same distribution can be seen twice (installed and on PYTHONPATH): only distinct targets conflict
        matches = {ep.value: ep for ep in importlib.metadata.entry_points(group=self.group, name=name)}
        if len(matches) > 1:
            who = ", ".join(f"{v} ({_dist_name(ep)})" for v, ep in sorted(matches.items()))
            raise BenchError(f"{self.kind} {name!r} is declared by more than one installed package in entry-point group "
                             f"{self.group}: {who}; uninstall one, or name the object by its import path")
        return next(iter(matches.values()), None)

    def __contains__(self, name: object) -> bool:
        """Registered built-ins only: resolving an import path or entry point imports code (use ``get``)."""
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def in_order(self) -> list[tuple[str, T]]:
        """Built-ins in registration order, then what was resolved from outside bench, in the order it was."""
        return [*self._items.items(), *self._resolved.items()]

    def names(self) -> list[str]:
        """Built-in names and the names installed packages declare in the entry-point group."""
        return sorted(set(self._items) | set(self.entry_points()))


# ----------------------------------------------------------------------------- loading from outside bench


def import_object(path: str, kind: str) -> Any:
    """``package.module:Object[.Attr]`` -> the object; a one-line BenchError says which part is missing."""
    if not _IMPORT_PATH.match(path):
        raise BenchError(f"{kind} {path!r} is not an import path: write package.module:Object (one colon)")
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise BenchError(f"{kind} {path!r}: no module named {e.name!r}; install the package that provides it "
                             "or put its folder on PYTHONPATH") from None
        raise BenchError(f"{kind} {path!r}: importing {module_name} failed: {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing; say so in one line
        raise BenchError(f"{kind} {path!r}: importing {module_name} failed: {_one_line(e)}") from None
    for i, part in enumerate(attr.split(".")):
        owner = ".".join([module_name, *attr.split(".")[:i]]) if i else module_name
        obj = getattr(obj, part, _ABSENT)
        if obj is _ABSENT:
            raise BenchError(f"{kind} {path!r}: {owner} has no attribute {part!r}")
    return obj


def _load_entry_point(ep: importlib.metadata.EntryPoint, kind: str, where: str) -> Any:
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - a broken plugin: name it, in one line
        raise BenchError(f"{kind} {where}: loading it failed: {_one_line(e)}; reinstall or uninstall {_dist_name(ep)}") from None


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an installed package"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def check_class(obj: Any, base: type, where: str, kind: str) -> type:
    """``obj`` as a class that implements ``base``'s interface, or a one-line BenchError naming what is missing.

    The interface is ``base.required``: names a subclass must define itself (methods it must
    override, class attributes it must set); ``"loss|training_step"`` asks for either. A name still
    holding the base class's value, or unset, or empty, counts as missing. When ``base`` has an
    ``Options`` class (a pydantic model), the subclass's ``Options`` must derive from it.
    """
    if not (isinstance(obj, type) and issubclass(obj, base)):
        what = f"class {obj.__qualname__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise BenchError(f"{kind} {where}: is {what}, not a subclass of {base.__module__}.{base.__qualname__}")
    required: tuple[str, ...] = getattr(base, "required", ())
    missing = [n for n in required if all(_missing(obj, base, alt) for alt in n.split("|"))]
    if missing:
        names = [n.replace("|", " or ") for n in missing]
        raise BenchError(f"{kind} {where}: {obj.__qualname__} does not define {', '.join(names)} "
                         f"(a {kind} defines: {', '.join(n.replace('|', ' or ') for n in required)})")
    base_options = getattr(base, "Options", None)
    if isinstance(base_options, type):
        options = getattr(obj, "Options", None)
        if not (isinstance(options, type) and issubclass(options, base_options)):
            raise BenchError(f"{kind} {where}: {obj.__qualname__}.Options must be a subclass of "
                             f"{base_options.__module__}.{base_options.__qualname__}")
    return obj


def _missing(cls: type, base: type, name: str) -> bool:
    value = inspect.getattr_static(cls, name, _ABSENT)
    if value is _ABSENT or value is None or value is inspect.getattr_static(base, name, _ABSENT):
        return True
    return isinstance(value, str) and not value


def describe(obj: Any) -> str:
    """First line of an object's docstring, for `bench list`."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
