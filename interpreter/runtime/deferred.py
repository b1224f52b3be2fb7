"""Inside the sandbox: import seaborn with scipy deferred to its first use.

seaborn 0.13 imports scipy eagerly for three names: `gaussian_kde` (seaborn/_statistics.py
and seaborn/_stats/density.py: kdeplot, violinplot, histplot(kde=True), so.KDE) and
`hierarchy` (seaborn/matrix.py: clustermap). scipy is ~37 MB of anonymous memory and
~0.45 s of import that every warm template would hold for the few runs that draw a KDE
or a dendrogram, and it is not among the libraries a warm sandbox preloads
(SANDBOX_POOL_PRELOAD names numpy, pandas, matplotlib, seaborn).

So while seaborn is imported, `scipy`, `scipy.stats`, `scipy.cluster` and
`scipy.cluster.hierarchy` are stand-in modules holding only those names, bound to
objects that import the real scipy on first use. seaborn takes its with-scipy path
(`_no_scipy` False, as with an eager scipy), so every function behaves as before and
only the run that needs scipy pays its import. The stand-ins leave sys.modules as soon
as seaborn is imported: a member's own `import scipy` gets the real, complete scipy.

A seaborn laid out otherwise (it asks the stand-ins for anything else, or keeps them
somewhere other than those three names) is detected right after its import: every
binding to a stand-in is replaced by the real object (scipy imported eagerly, as if
nothing had been deferred) and the reason is returned for the log. seaborn never ends
up without scipy.
"""

from __future__ import annotations

import sys

ModuleType = type(sys)  # types.ModuleType, without importing types

# The seaborn module globals expected to hold a deferred scipy object; nothing else may.
EXPECTED_BINDINGS = {
    ("seaborn._statistics", "gaussian_kde"),
    ("seaborn._stats.density", "gaussian_kde"),
    ("seaborn.matrix", "hierarchy"),
}


def gaussian_kde(*args, **kwargs):
    """scipy.stats.gaussian_kde, imported on first use (see the module's docstring)."""
    from scipy.stats import gaussian_kde as real

    return real(*args, **kwargs)


class _DeferredModule(ModuleType):
    """A module whose attributes come from the real `target`, imported on first access."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.__dict__["_deferred_target"] = target

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy/pickle/inspect probes: not a reason to import scipy
            raise AttributeError(name)
        import importlib

        return getattr(importlib.import_module(self.__dict__["_deferred_target"]), name)


hierarchy = _DeferredModule("scipy.cluster.hierarchy")


def _stand_ins() -> dict[str, ModuleType]:
    """sys.modules entries for seaborn's import only: each holds just what seaborn takes."""
    scipy, stats, cluster = (ModuleType(name) for name in ("scipy", "scipy.stats", "scipy.cluster"))
    stats.gaussian_kde = gaussian_kde
    cluster.hierarchy = hierarchy
    scipy.stats, scipy.cluster = stats, cluster
    for module in (scipy, cluster):
        module.__path__ = []  # a package, so `from scipy.cluster import hierarchy` looks no further
    return {"scipy": scipy, "scipy.stats": stats, "scipy.cluster": cluster, "scipy.cluster.hierarchy": hierarchy}


def _real(stand_in: object) -> object:
    import importlib

    if stand_in is gaussian_kde:
        return importlib.import_module("scipy.stats").gaussian_kde
    return importlib.import_module(stand_in.__name__)


def import_seaborn() -> str | None:
    """Import seaborn with scipy deferred. Returns None, or why scipy was imported eagerly.

    Called with scipy not yet imported (else there is nothing to defer).
    """
    stand_ins = _stand_ins()
    deferred = {id(obj): obj for obj in (*stand_ins.values(), gaussian_kde)}
    before = set(sys.modules)
    sys.modules.update(stand_ins)
    failure = None
    try:
        import seaborn  # noqa: F401
    except ImportError as exc:  # seaborn asked the stand-ins for more than the three names
        failure = f"seaborn's import needs more of scipy ({exc})"
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    bindings = {}
    for module_name in set(sys.modules) - before:
        namespace = getattr(sys.modules[module_name], "__dict__", None) or {}
        for attribute, value in list(namespace.items()):
            if id(value) in deferred and value is deferred[id(value)]:
                bindings[(module_name, attribute)] = value
    if failure is None and set(bindings) == EXPECTED_BINDINGS:
        return None
    if failure is None:
        failure = (f"seaborn keeps scipy objects at {sorted(set(bindings) ^ EXPECTED_BINDINGS)} "
                   f"instead of {sorted(EXPECTED_BINDINGS)}")
    for (module_name, attribute), value in bindings.items():
        setattr(sys.modules[module_name], attribute, _real(value))
    import seaborn  # noqa: F401,F811 - after a failed import: again, with the real scipy
    return f"scipy imported eagerly: {failure}"
