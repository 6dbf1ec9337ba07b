"""Plugins: the user's own modules whose import registers pruning methods, models, datasets,
search spaces or metrics (each through its registry's decorator).

A plugin is named by a module name (``mypkg.pruning``, importable where the command runs) or by
the path of a ``.py`` file (imported under its file name, without ``.py``), optionally followed by
``:function``, a function of the module called with no arguments after the import (for modules
that register on request rather than on import: ``mypkg.pruning:register``). ``load_plugin``
imports it once per process (and calls the function each time: make it idempotent). A sweep
records what it loaded and loads the same plugins in every trial process before the recipe is
built, so a method that a plugin registers is known wherever a trial runs (on other nodes the
file must be at the same path, or the module importable there).

Nothing here imports torch: the command lines load plugins before any other work.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from .cliutils import first_line


class PluginError(ValueError):
    """A plugin that cannot be loaded; the message is one line naming it and why."""


def split_plugin(spec: str) -> tuple[str, str]:
    """(module name or ``.py`` path, function name or "") of a plugin spec."""
    target, sep, function = spec.rpartition(":")
    if sep and target and function.isidentifier():
        return target, function
    return spec, ""


def load_plugin(spec: str) -> str:
    """Import the plugin ``spec`` (a module name or a ``.py`` file's path, optionally with
    ``:function``) unless this process has it already, then call the function if one is named;
    returns the module name. Raises ``PluginError`` (one line) if it cannot be imported, has no
    such function, or raises while importing or in the function."""
    if not spec or not spec.strip():
        raise PluginError(f"plugin {spec!r}: give a module name (mypkg.methods) or a .py file")
    target, function = split_plugin(spec)
    if not function:
        return _import(spec)
    module = sys.modules[_import(target)]
    register = getattr(module, function, None)
    if not callable(register):
        raise PluginError(f"plugin {spec!r}: {target} has no function {function!r}")
    try:
        register()
    except Exception as err:
        raise PluginError(f"plugin {spec!r} failed ({first_line(err)})") from None
    return module.__name__


def _import(spec: str) -> str:
    """Import module or ``.py`` file ``spec`` once per process; returns its module name."""
    if spec.endswith(".py"):
        path = os.path.abspath(os.path.expanduser(spec))
        name = os.path.splitext(os.path.basename(path))[0]
        if not os.path.isfile(path):
            if importlib.util.find_spec(name) is not None:  # shipped to this node by Ray
                return _import(name)
            raise PluginError(f"plugin {spec!r}: no such file")
        loaded = sys.modules.get(name)
        if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") == path:
            return name
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"plugin {spec!r}: not a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # registered first, as a regular import does
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise PluginError(f"plugin {spec!r} failed to import ({first_line(err)})") from None
        return name
    try:
        importlib.import_module(spec)
    except Exception as err:
        raise PluginError(f"plugin {spec!r} failed to import ({first_line(err)})") from None
    return spec


def absolute(spec: str) -> str:
    """``spec`` with a ``.py`` file's path made absolute (``:function`` kept), so that another
    process loads the same file whatever its working folder (Ray Tune runs each trial in a
    folder of its own); module names are returned as they are."""
    target, function = split_plugin(spec)
    if target.endswith(".py"):
        target = os.path.abspath(os.path.expanduser(target))
    return f"{target}:{function}" if function else target


def load_plugins(specs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``load_plugin`` for each of ``specs``, in order; returns them as another process loads
    them the same way (``absolute``)."""
    loaded = tuple(absolute(spec) for spec in specs)
    for spec in loaded:
        load_plugin(spec)
    return loaded
