"""Every ``>>>`` example in mailguard's docstrings runs, and says what it prints."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import mailguard

MODULES = sorted(m.name for m in pkgutil.walk_packages(mailguard.__path__, "mailguard."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # an optional extra that is not installed
        if exc.name and not exc.name.startswith("mailguard"):
            pytest.skip(f"{name} needs {exc.name}")
        raise
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (above)"


def test_the_metrics_examples_are_doctests() -> None:
    """The module docstring's Starlette and Flask set-ups are run, not just shown."""
    import mailguard.metrics

    result = doctest.testmod(mailguard.metrics, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 20
    assert "app.mount(" not in (mailguard.metrics.__doc__ or "")
