"""Where each method sits in the course: one ``Section`` per method, registered beside the library's ``Method``.

A ``methods.base.Method`` records the algorithm (its config, ``apply``, how a model folder saves and rebuilds it); a
``Section`` records what the course does with it: the notebook whose job trains it, what else that notebook plans
(sweeps, variants), the notebook parameters it declares and their checks, the notebooks it reads, how ``bench`` times
it. The course's own sections are the modules of this package (one per method, named by its id); a plug-in outside
the project registers its ``Method`` and its ``Section`` in its own module (named in ``CLIPFT_PLUGINS``). Everything
that plans or checks notebooks reads this registry; a method without a section is a library method the course does
not run.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ...errors import ConfigError
from ...methods import get, registry
from ...methods.base import PROFILE_NAMES

BENCH_KINDS = ("train", "inference", "none")


@dataclass(frozen=True)
class Section:
    """A method's place in the course. Only ``method`` and ``notebook`` are required."""

    method: str                      # the method's id (a registered ``Method``)
    notebook: str                    # the notebook whose job trains it ("05_lora")
    notebook_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # profile -> notebook params
    notebook_checks: Mapping[str, Callable[[str, Any], None]] = field(default_factory=dict)  # its notebook's params
    plan: Callable[[dict[str, Any], Any], str] | None = None  # what else its notebook trains (params, profile)
    reads: tuple[str, ...] = ()      # notebooks whose files its notebook reads at the same (shots, seed)
    bench: str = "train"             # how `bench` times it: "train" (a step), "inference" (one frozen forward), "none"
    fixed_config: Mapping[str, Any] = field(default_factory=dict)  # config fields its notebook sets itself

    def __post_init__(self) -> None:
        unknown = set(self.notebook_defaults) - set(PROFILE_NAMES)
        if unknown:
            raise ConfigError(f"Section {self.method!r}: unknown profile(s) {sorted(unknown)}; use {PROFILE_NAMES}.")
        if self.bench not in BENCH_KINDS:
            raise ConfigError(f"Section {self.method!r}: bench must be one of {BENCH_KINDS}, got {self.bench!r}.")


SECTIONS: dict[str, Section] = {}
_loaded = False


def register(section: Section) -> Section:
    """Add ``section`` (a method has one place in the course) and return it."""
    SECTIONS[section.method] = section
    return section


def unregister(method: str) -> None:
    """Remove a method's section (tests that add a plug-in clean up with this)."""
    SECTIONS.pop(method, None)


def load() -> None:
    """Import the library's plug-ins and every section module of this package (idempotent)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
    from ... import plugins
    plugins.load()  # CLIPFT_PLUGINS modules may register a method and its section


def sections() -> list[Section]:
    """The sections of the registered methods, in the methods' order (a method without a section is left out)."""
    load()
    return [SECTIONS[m.name] for m in registry() if m.name in SECTIONS]


def section(method: str) -> Section:
    """The section of ``method``, or a ConfigError saying how to give it one."""
    get(method)  # an unknown method is an error listing the known ones
    load()
    if method not in SECTIONS:
        raise ConfigError(f"The method '{method}' has no place in the course (no Section). Fix: register one beside "
                          f"it: register(Section(method='{method}', notebook='NN_name')) from "
                          "clipft_utils.course.sections, and add its section to that notebook.")
    return SECTIONS[method]


def method_names() -> tuple[str, ...]:
    """The methods the course runs, in order."""
    return tuple(s.method for s in sections())


def notebooks() -> dict[str, tuple[str, ...]]:
    """Notebook -> the methods its job trains, in course order (the notebook of a method's lowest order first)."""
    out: dict[str, list[str]] = {}
    for s in sections():
        out.setdefault(s.notebook, []).append(s.method)
    return {nb: tuple(ms) for nb, ms in out.items()}


def notebook_defaults(profile: str, notebook: str) -> dict[str, Any]:
    """The parameters a profile gives ``notebook`` (from its methods' sections)."""
    out: dict[str, Any] = {}
    for s in sections():
        if s.notebook == notebook:
            out.update(s.notebook_defaults.get(profile, {}))
    return out


def notebook_default(profile: str, name: str) -> Any:
    """One notebook parameter's default under ``profile`` (else the full profile's), None when no section sets it."""
    for prof in (profile, "full"):
        for s in sections():
            if name in s.notebook_defaults.get(prof, {}):
                return s.notebook_defaults[prof][name]
    return None


QUICK: dict[str, Any] = {"epochs": 1, "test_per_class": 5}
"""``--quick``: every training 1 epoch, 5 test images per class; each section adds its smallest sweeps
(``notebook_defaults["quick"]``), see ``quick_layer``."""


def quick_layer() -> dict[str, Any]:
    """``--quick``'s parameters: ``QUICK`` plus every section's own ``quick`` notebook defaults, scoped to it."""
    return QUICK | {s.method: dict(s.notebook_defaults["quick"]) for s in sections() if "quick" in s.notebook_defaults}
