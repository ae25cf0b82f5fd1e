"""Repository-wide pytest configuration.

``@pytest.mark.requires("vfw-board-pc", ...)`` marks a test that applies only when those
distributions are installed, and ``@pytest.mark.requires_absent(...)`` one that applies only
when they are not: nox's selective-install sessions run the same suites, and such tests are
deselected (not skipped) where they do not apply.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, distribution

import pytest

try:
    from hypothesis import settings
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    settings = None

if settings is not None:
    # CI (HYPOTHESIS_PROFILE=ci) runs more generated cases; suites that need an exact count set
    # it on the test itself.
    settings.register_profile("ci", max_examples=500, deadline=None)
    settings.register_profile("dev", deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*dists): needs these distributions installed")
    config.addinivalue_line("markers", "requires_absent(*dists): needs them not installed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        applies = all(_installed(d) for m in item.iter_markers("requires") for d in m.args)
        applies = applies and not any(
            _installed(d) for m in item.iter_markers("requires_absent") for d in m.args)
        (keep if applies else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
