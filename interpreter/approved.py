"""Which packages members may install, and how a request is read.

A request is a bare PyPI name with an optional version specifier (`seaborn>=0.13`).
Anything else (markers, URLs, local paths, pip options, extras, shell characters)
is refused before pip is ever involved, so a request string can never become a pip
argument with meaning of its own. Names are compared the PyPI way (case and `-_.`
runs folded) and common import names map to their distribution (`sklearn`).

The approved list is the seed's, by category, plus everyday helpers; the admin can
replace it (APPROVED_PACKAGES) or extend it (EXTRA_APPROVED_PACKAGES).

Versions are the operator's policy, never a member's: an entry of the approved list may
carry a specifier (`pandas>=2.2`, `numpy<3`; one name listed twice means both), and that
is all pip is ever given for the package. A member's specifier is only a check that the
version the server provides suits them (`seaborn>=0.13`): it never picks, pins, upgrades
or downgrades what the venv every member imports holds.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

# The seed's categories, then the helpers its origin allowed (Excel/Parquet readers, tables, dates).
DEFAULT_APPROVED: Mapping[str, tuple[str, ...]] = {
    "data science": ("numpy", "pandas", "scipy", "scikit-learn", "statsmodels"),
    "visualization": ("matplotlib", "seaborn", "plotly", "bokeh", "altair"),
    "image processing": ("pillow", "imageio", "scikit-image"),
    "machine learning": ("tensorflow", "keras", "torch", "xgboost", "lightgbm"),
    "natural language": ("nltk", "spacy", "gensim", "wordcloud"),
    "math and graphs": ("sympy", "networkx", "numba"),
    "helpers": ("openpyxl", "xlrd", "xlsxwriter", "pyarrow", "tabulate", "tqdm", "python-dateutil", "pytz"),
}

# Import names people type instead of the distribution name. An alias only applies when
# its target is approved (so `cv2` means nothing unless an admin approves opencv).
ALIASES: Mapping[str, tuple[str, ...]] = {
    "sklearn": ("scikit-learn",),
    "pil": ("pillow",),
    "skimage": ("scikit-image",),
    "pytorch": ("torch",),
    "dateutil": ("python-dateutil",),
    "cv2": ("opencv-python-headless", "opencv-python"),
}

MAX_REQUEST_LENGTH = 100
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([A-Za-z0-9_.]{1,100})'")
# Name: what PyPI accepts. Specifier: operators, versions, wildcards, commas, spaces.
_REQUEST = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?) *(.*)$", re.DOTALL)
_SPECIFIER_CHARS = re.compile(r"^[0-9A-Za-z<>=!~,.*+ ]*$")


class PackageRequestError(ValueError):
    """A request that is refused; the message is meant for the member."""


@dataclasses.dataclass(frozen=True)
class PackageRequest:
    """A validated request: `name` is the canonical distribution name."""

    name: str
    specifier: SpecifierSet  # the member's: checked against what is installed, never given to pip
    category: str
    policy: SpecifierSet = SpecifierSet()  # the operator's, from the approved list

    @property
    def requirement(self) -> str:
        """The request as the result reports it, e.g. `seaborn>=0.13`."""
        return f"{self.name}{self.specifier}"

    @property
    def install_requirement(self) -> str:
        """What pip is given: the name and the operator's specifier only."""
        return f"{self.name}{self.policy}"


def _shown(text: str) -> str:
    """A member's request, shortened for an error message."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text.strip())
    return text if len(text) <= 60 else text[:57] + "..."


def split_request(request: str) -> tuple[str, SpecifierSet]:
    """`'seaborn >= 0.13'` -> `('seaborn', SpecifierSet('>=0.13'))`; anything else raises PackageRequestError."""
    if not isinstance(request, str) or not request.strip():
        raise PackageRequestError("Package names must be non-empty text")
    text = request.strip()
    if len(text) > MAX_REQUEST_LENGTH:
        raise PackageRequestError(f"Package request '{_shown(text)}' is too long")
    match = _REQUEST.match(text)
    if match is None:
        # Leading '-' (pip options, -e), '.', '/', '~' (paths), quotes, shell characters...
        raise PackageRequestError(f"'{_shown(text)}' is not a package name")
    name, rest = match.group(1), match.group(2)
    if rest.startswith("["):
        raise PackageRequestError(f"Package extras are not supported ('{_shown(text)}'): ask for each package by name")
    if rest and not _SPECIFIER_CHARS.match(rest):
        # ';' markers, '@' URLs, '/' paths, options after the name, shell characters, newlines
        raise PackageRequestError(f"'{_shown(text)}' is not a package name with an optional version (like 'seaborn>=0.13')")
    try:
        specifier = SpecifierSet(rest)
    except InvalidSpecifier:
        raise PackageRequestError(f"'{_shown(text)}' has an invalid version specifier (try 'seaborn>=0.13')") from None
    return name, specifier


class ApprovedPackages:
    """The approved list in force, and the reading of requests against it."""

    def __init__(self, categories: Mapping[str, Iterable[str]] | None = None) -> None:
        self._category_of: dict[str, str] = {}
        self._policy: dict[str, SpecifierSet] = {}
        for category, entries in (categories if categories is not None else DEFAULT_APPROVED).items():
            for entry in entries:
                name, specifier = split_request(entry)  # an operator's entry: a name, maybe a version policy
                canonical = canonicalize_name(name)
                self._category_of.setdefault(canonical, category)
                self._policy[canonical] = self._policy.get(canonical, SpecifierSet()) & specifier

    @classmethod
    def from_settings(cls, settings) -> "ApprovedPackages":
        override = tuple(getattr(settings, "approved_packages_override", ()) or ())
        extra = tuple(getattr(settings, "extra_approved_packages", ()) or ())
        categories: dict[str, tuple[str, ...]] = (
            {"admin approved": override} if override else dict(DEFAULT_APPROVED)
        )
        if extra:
            categories["admin approved extras"] = extra
        try:
            return cls(categories)
        except PackageRequestError as exc:
            raise ValueError(f"APPROVED_PACKAGES / EXTRA_APPROVED_PACKAGES: {exc}") from None

    def __len__(self) -> int:
        return len(self._category_of)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonicalize_name(name) in self._category_of

    def by_category(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for name, category in self._category_of.items():
            grouped.setdefault(category, []).append(name)
        return {category: sorted(names) for category, names in grouped.items()}

    def policy(self, name: str) -> SpecifierSet:
        """The operator's version specifier for an approved name (empty: newest that installs)."""
        return self._policy.get(canonicalize_name(name), SpecifierSet())

    def policy_fingerprint(self) -> list[str]:
        """The version policy in force, as recorded with a venv: a change means a rebuild."""
        return sorted(f"{name}{spec}" for name, spec in self._policy.items() if str(spec))

    def resolve_name(self, name: str) -> str | None:
        """The approved canonical name for `name` (an alias counts), else None."""
        canonical = canonicalize_name(name)
        if canonical in self._category_of:
            return canonical
        for target in ALIASES.get(canonical, ()):
            if target in self._category_of:
                return target
        return None

    def for_missing_module(self, error: str) -> str | None:
        """The approved package that provides the module a run's ModuleNotFoundError names
        (`sklearn` -> scikit-learn), so the member can be told to ask for it; else None."""
        found = _MISSING_MODULE.findall(error or "")
        return self.resolve_name(found[-1].split(".")[0]) if found else None

    def parse(self, request: str) -> PackageRequest:
        """Read one request, or raise PackageRequestError with the member-facing reason."""
        name, specifier = split_request(request)
        approved = self.resolve_name(name)
        if approved is None:
            raise PackageRequestError(f"Package '{name}' is not in the approved list")
        return PackageRequest(name=approved, specifier=specifier, category=self._category_of[approved],
                              policy=self.policy(approved))

    def check(self, request: str) -> tuple[bool, str]:
        """The seed's `(is_approved, reason)` answer."""
        try:
            parsed = self.parse(request)
        except PackageRequestError as exc:
            return False, str(exc)
        return True, f"'{parsed.requirement}' is approved ({parsed.category})"
