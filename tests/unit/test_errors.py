"""The one error hierarchy: every foreseeable failure is a class of dssync.errors, drawn in its
docstring with its exit code."""

from __future__ import annotations

import importlib
import pkgutil
import re

import dssync
from dssync import errors


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_all_subclasses(sub)}
    return out


def test_every_error_class_of_the_package_is_defined_in_dssync_errors_and_drawn_in_its_tree() -> None:
    for mod in pkgutil.walk_packages(dssync.__path__, "dssync."):
        importlib.import_module(mod.name)
    classes = _all_subclasses(errors.DssyncError)
    assert len(classes) >= 15
    elsewhere = sorted(f"{c.__module__}.{c.__name__}" for c in classes if c.__module__ != "dssync.errors")
    assert not elsewhere, f"error classes outside dssync.errors: {elsewhere}"
    tree = errors.__doc__ or ""
    for cls in classes:
        line = re.search(rf"[├└]── {cls.__name__}\s+(\S+)", tree)
        assert line, f"{cls.__name__} is missing from the tree in dssync/errors.py"
        code = line.group(1)
        if code.isdigit():  # a subclass's line names its description, not a code
            assert int(code) == cls.exit_code, (cls.__name__, code, cls.exit_code)


def test_exit_codes_identify_their_category() -> None:
    """Classes that share an exit code are one category: a subclass of the class owning it."""
    owners: dict[int, type] = {}
    for cls in sorted(_all_subclasses(errors.DssyncError), key=lambda c: len(c.__mro__)):
        owner = owners.setdefault(cls.exit_code, cls)
        if cls.exit_code != 1:
            assert issubclass(cls, owner), f"{cls.__name__} shares exit code {cls.exit_code} with {owner.__name__}"
