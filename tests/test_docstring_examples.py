"""The Example sections of the public docstrings run as written, and a module that promises examples runs some."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import mechmon

MODULES = sorted(m.name for m in pkgutil.walk_packages(mechmon.__path__, "mechmon."))
WITH_EXAMPLES = [m for m in MODULES if "Example:" in inspect.getsource(importlib.import_module(m))]


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    examples = [ex.source for test in doctest.DocTestFinder().find(module) for ex in test.examples]
    skipped_only = bool(examples) and all("doctest: +SKIP" in src for src in examples)  # a Trainer, a dataset
    assert result.failed == 0
    assert result.attempted > 0 or skipped_only, f"{name} promises an Example section but none ran"


def test_most_modules_with_public_classes_promise_examples():
    assert len(WITH_EXAMPLES) >= 20, WITH_EXAMPLES
