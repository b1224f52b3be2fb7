"""The approved list: which requests are accepted, how names are read, and that a refusal costs no pip call."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import load_settings
from interpreter.approved import DEFAULT_APPROVED, ApprovedPackages
from interpreter.packages import PackageManager


@pytest.fixture
def manager(tmp_path: Path) -> PackageManager:
    settings = load_settings({}, dotenv=False).replace(data_dir=tmp_path)
    return PackageManager(settings, base_packages=())


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("numpy", "numpy"),
        ("NumPy", "numpy"),
        ("scikit_learn", "scikit-learn"),
        ("Scikit.Learn", "scikit-learn"),
        ("sklearn", "scikit-learn"),
        ("PIL", "pillow"),
        ("pil", "pillow"),
        ("skimage", "scikit-image"),
        ("pytorch", "torch"),
        ("dateutil", "python-dateutil"),
        ("python_dateutil", "python-dateutil"),
        ("seaborn>=0.13", "seaborn>=0.13"),
        ("seaborn >= 0.13", "seaborn>=0.13"),
        ("sklearn>=1.3,<2", "scikit-learn<2,>=1.3"),
        ("pandas==2.*", "pandas==2.*"),
        ("  sympy  ", "sympy"),
    ],
)
def test_accepted_requests_are_normalised(manager: PackageManager, request_text: str, expected: str) -> None:
    approved, reason = manager.is_package_approved(request_text)
    assert approved, reason
    assert manager.approved.parse(request_text).requirement == expected
    assert manager.pip_calls == 0


REFUSED = [
    ("requests", "Package 'requests' is not in the approved list"),
    ("requests>=2", "Package 'requests' is not in the approved list"),
    ("cv2", "Package 'cv2' is not in the approved list"),  # opencv is not approved by default
    ('numpy; os_name=="posix"', "is not a package name with an optional version"),
    ("numpy @ https://example.com/numpy.whl", "is not a package name with an optional version"),
    ("https://example.com/numpy-2.0-py3-none-any.whl", "is not a package name with an optional version"),
    ("git+https://github.com/numpy/numpy", "is not a package name with an optional version"),
    ("./numpy-2.0-py3-none-any.whl", "is not a package name"),
    ("/tmp/numpy", "is not a package name"),
    ("~/numpy", "is not a package name"),
    ("-e .", "is not a package name"),
    ("-e git+https://x/y", "is not a package name"),
    ("--index-url=https://evil.example/simple", "is not a package name"),
    ("numpy --index-url https://evil.example/simple", "is not a package name with an optional version"),
    ("numpy pandas", "has an invalid version specifier"),
    ("num py", "has an invalid version specifier"),
    ("numpy; rm -rf /", "is not a package name with an optional version"),
    ("numpy && curl evil", "is not a package name with an optional version"),
    ("numpy|sh", "is not a package name with an optional version"),
    ("$(reboot)", "is not a package name"),
    ("`id`", "is not a package name"),
    ("numpy\nrequests", "is not a package name with an optional version"),
    ("numpy[dev]", "extras are not supported"),
    ("seaborn>=banana", "has an invalid version specifier"),
    ("", "must be non-empty"),
    ("   ", "must be non-empty"),
    ("a" * 200, "is too long"),
]


@pytest.mark.parametrize(("request_text", "reason_part"), REFUSED)
async def test_refused_requests_get_a_reason_and_no_pip_call(
    manager: PackageManager, request_text: str, reason_part: str
) -> None:
    approved, reason = manager.is_package_approved(request_text)
    assert not approved
    assert reason_part in reason

    report = await manager.ensure_packages([request_text])
    assert report.installed == []
    assert [item["reason"] for item in report.failed] == [reason]
    assert manager.pip_calls == 0
    assert not manager.root.exists(), "a refused request must not even build the venv"


async def test_seed_error_text_is_exact(manager: PackageManager) -> None:
    report = await manager.ensure_packages(["requests"])
    assert report.error_message() == "Package 'requests' is not in the approved list"
    assert report.failed == [{"package": "requests", "reason": "Package 'requests' is not in the approved list"}]


async def test_one_refused_request_refuses_the_lot_without_pip(manager: PackageManager) -> None:
    report = await manager.ensure_packages(["numpy", "requests", "leftpad"])
    assert report.installed == []
    assert report.error_message() == (
        "Package 'requests' is not in the approved list; Package 'leftpad' is not in the approved list"
    )
    assert manager.pip_calls == 0


async def test_too_many_packages_at_once_are_refused(manager: PackageManager) -> None:
    report = await manager.ensure_packages(["numpy"] * 21)
    assert "At most 20 packages" in report.error_message()
    assert manager.pip_calls == 0


def test_default_list_holds_the_seed_categories_and_helpers() -> None:
    approved = ApprovedPackages()
    for name in ("numpy", "pandas", "scipy", "scikit-learn", "statsmodels", "matplotlib", "seaborn", "plotly",
                 "bokeh", "altair", "pillow", "imageio", "scikit-image", "tensorflow", "keras", "torch", "xgboost",
                 "lightgbm", "nltk", "spacy", "gensim", "wordcloud", "sympy", "networkx", "numba", "openpyxl",
                 "xlrd", "xlsxwriter", "pyarrow", "tabulate", "tqdm", "python-dateutil", "pytz"):
        assert name in approved, name
    assert len(approved) == sum(len(names) for names in DEFAULT_APPROVED.values())
    assert "requests" not in approved


def test_admin_override_replaces_and_extras_extend(tmp_path: Path) -> None:
    base = load_settings({}, dotenv=False).replace(data_dir=tmp_path)

    extended = PackageManager(base.replace(extra_approved_packages=("Requests", "opencv-python-headless")))
    assert extended.is_package_approved("requests")[0]
    assert extended.is_package_approved("numpy")[0]
    assert extended.approved.parse("cv2").name == "opencv-python-headless"  # the alias applies once approved

    replaced = PackageManager(base.replace(approved_packages_override=("sympy",)))
    assert replaced.is_package_approved("sympy")[0]
    assert replaced.is_package_approved("numpy") == (False, "Package 'numpy' is not in the approved list")


def test_settings_from_environment_configure_the_list(tmp_path: Path) -> None:
    settings = load_settings(
        {"DATA_DIR": str(tmp_path), "APPROVED_PACKAGES": "sympy, Tabulate", "EXTRA_APPROVED_PACKAGES": "rich"},
        dotenv=False,
    )
    manager = PackageManager(settings)
    assert sorted(name for names in manager.approved.by_category().values() for name in names) == [
        "rich", "sympy", "tabulate"
    ]
