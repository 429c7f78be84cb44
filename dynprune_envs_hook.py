"""Register dynprune's environments as soon as ``gymnasium`` is imported.

Gymnasium 1.x has no plugin entry point for environments, so the package ships a
one-line ``dynprune_envs.pth`` (``import dynprune_envs_hook``) that every
installation of the wheel puts into site-packages, editable or not. It costs nothing
at interpreter start: it only adds a meta-path finder that, the first time
``gymnasium`` itself finishes importing, imports :mod:`envs` (which registers
every dynprune id). Then
``gym.make("DynPrune-v0")`` works with nothing imported first.

This module lives outside every package on purpose: a ``.pth`` line runs at start-up,
and importing ``envs`` there would import gymnasium (and its cost) in every
interpreter of the environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any


def _register() -> None:
    try:
        import envs  # noqa: F401 - registers the ids
    except Exception as error:  # gymnasium must still import; say why our ids are missing
        warnings.warn(
            f"dynprune: the environments were not registered ({type(error).__name__}: {error}); "
            "`import envs` shows the full error",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisterAfterGymnasium(importlib.abc.MetaPathFinder):
    """Wraps gymnasium's loader so ``envs`` is imported right after gymnasium loads."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)  # one shot
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            _register()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Add the finder unless gymnasium is already imported (then register at once)."""
    if "gymnasium" in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterGymnasium) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterGymnasium())


install()
