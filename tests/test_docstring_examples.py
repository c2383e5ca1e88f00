"""The Example sections of the public docstrings run as written."""

import doctest
import importlib
import pkgutil

import pytest

import mechmon

MODULES = sorted(m.name for m in pkgutil.walk_packages(mechmon.__path__, "mechmon."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0
