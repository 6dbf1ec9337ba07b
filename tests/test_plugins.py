"""Plugins (``prune_core.plugins``): a module or ``.py`` file, optionally ``:function``, loaded
once per process; bad ones refused in one line naming the plugin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prune_core.plugins import PluginError, absolute, load_plugin, load_plugins


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_relative_file_made_absolute_function_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("p.py:register") == f"{tmp_path}/p.py:register"
    assert absolute("sub/p.py") == f"{tmp_path}/sub/p.py"
    assert absolute("mypkg.methods:register") == "mypkg.methods:register"


def test_file_imported_once_function_called_each_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "plug_once.py", "IMPORTS = []\nCALLS = []\nIMPORTS.append(1)\n"
          "def register():\n    CALLS.append(1)\n")  # fmt: skip
    try:
        assert load_plugins(["plug_once.py:register"]) == (f"{tmp_path}/plug_once.py:register",)
        assert load_plugin(f"{tmp_path}/plug_once.py:register") == "plug_once"
        module = sys.modules["plug_once"]
        assert module.IMPORTS == [1] and module.CALLS == [1, 1]
    finally:
        sys.modules.pop("plug_once", None)


@pytest.mark.parametrize(
    ("spec", "source", "message"),
    [
        ("missing.py", None, "plugin 'missing.py': no such file"),
        ("no_such_module_xyz", None, "plugin 'no_such_module_xyz' failed to import "
         "(ModuleNotFoundError: No module named 'no_such_module_xyz')"),
        ("raises.py", "raise RuntimeError('boom')\n",
         "plugin 'raises.py' failed to import (RuntimeError: boom)"),
        ("nofunc.py:register", "X = 1\n", "plugin 'nofunc.py:register': nofunc.py has no "
         "function 'register'"),
        ("badfunc.py:register", "def register():\n    raise ValueError('no')\n",
         "plugin 'badfunc.py:register' failed (ValueError: no)"),
        ("", None, "plugin '': give a module name (mypkg.methods) or a .py file"),
    ],
)  # fmt: skip
def test_bad_plugins_refused_in_one_line(tmp_path, monkeypatch, spec, source, message):
    monkeypatch.chdir(tmp_path)
    if source is not None:
        write(tmp_path / spec.split(":")[0], source)
    with pytest.raises(PluginError) as err:
        load_plugin(spec)
    assert str(err.value) == message
    assert "raises" not in sys.modules  # a failed import leaves no half-made module
    for name in ("nofunc", "badfunc"):  # imported fine; their function was what failed
        sys.modules.pop(name, None)


def test_sweep_command_refuses_a_bad_plugin_before_any_file(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "sweeps.resnet18_iterative", "--quick", "--plugin", "nope.py"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": repo})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m sweeps.resnet18_iterative: error: --plugin: plugin "
        f"'{tmp_path}/nope.py': no such file"
    ]
    assert os.listdir(tmp_path) == []
