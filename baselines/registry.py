"""Methods by name: a registry the runner looks up, open to ``module:Class`` submissions."""

from __future__ import annotations

import difflib
import importlib
import inspect

from masklam_bench.baselines.base import LatentActionMethod

_REGISTRY: dict[str, type[LatentActionMethod]] = {}

_SUGGESTION_CUTOFF = 0.6
"""difflib similarity above which an unknown name is answered with "did you mean"."""


def register(cls: type[LatentActionMethod]) -> type[LatentActionMethod]:
    """Class decorator: make a method available to :func:`get_method` under ``cls.name``."""
    if not (inspect.isclass(cls) and issubclass(cls, LatentActionMethod)):
        raise TypeError(f"register() takes a LatentActionMethod subclass, got {cls!r}.")
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no `name`; set the class attribute, e.g. "
                         f"name = \"my-method\", before registering it.")
    if ":" in cls.name:
        raise ValueError(f"Method name {cls.name!r} contains ':', which is reserved for "
                         f"module:Class paths; choose another name.")
    known = _REGISTRY.get(cls.name)
    if known is not None and _full_name(known) != _full_name(cls):
        raise ValueError(f"Method name {cls.name!r} is already taken by "
                         f"{_full_name(known)}; choose another name.")
    _REGISTRY[cls.name] = cls  # re-registering the same class (a module reload) is harmless
    return cls


def _full_name(cls: type) -> str:
    """``module.QualifiedName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def get_method(name_or_path: str) -> type[LatentActionMethod]:
    """The method class registered as ``name_or_path``, or imported from ``module.path:ClassName``."""
    if ":" in name_or_path:
        return _import_method(name_or_path)
    try:
        return _REGISTRY[name_or_path]
    except KeyError:
        pass
    close = difflib.get_close_matches(name_or_path.lower(), available_methods(), n=1,
                                      cutoff=_SUGGESTION_CUTOFF)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    raise ValueError(f"Unknown method {name_or_path!r}{hint} Registered: "
                     f"{', '.join(available_methods())}; or give module.path:ClassName for a "
                     f"method of your own.")


def _import_method(path: str) -> type[LatentActionMethod]:
    """Import and validate a ``module.path:ClassName`` submission."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise ValueError(f"Malformed method path {path!r}; expected module.path:ClassName, "
                         f"e.g. my_package.my_lam:MyLAM.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Could not import module {module_name!r} for method {path!r} ({error}); "
                         f"install it, or put the folder that contains it on PYTHONPATH (e.g. "
                         f"PYTHONPATH=examples masklam-bench run ...).") from error
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"Module {module_name!r} has no attribute {class_name!r}; check the "
                         f"class name in {path!r}.")
    if not (inspect.isclass(cls) and issubclass(cls, LatentActionMethod)):
        raise ValueError(f"{path!r} is not a LatentActionMethod subclass; subclass "
                         f"masklam_bench.baselines.LatentActionMethod and implement its methods.")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ValueError(f"{path!r} does not implement {missing}; a method must implement every "
                         f"abstract method of LatentActionMethod.")
    return cls
