"""Register dynprune's environments as soon as ``gymnasium`` is imported.

Installed as a ``.pth`` line (``import dynprune._gym_hook``) by ``scripts/setup.sh``.
It costs nothing at interpreter start: it only adds a meta-path finder that, the
first time ``gymnasium`` itself finishes importing, imports :mod:`envs` (which
registers ``DynPrune-v0``). Gymnasium 1.x dropped the ``gymnasium.envs`` plugin
entry point, so this is how ``gym.make("DynPrune-v0")`` works with nothing
imported first.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any


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
            try:
                import envs  # noqa: F401 - registers DynPrune-v0
            except Exception:  # never break gymnasium's import because of ours
                pass

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Add the finder unless gymnasium is already imported (then register at once)."""
    if "gymnasium" in sys.modules:
        import envs  # noqa: F401
    elif not any(isinstance(f, _RegisterAfterGymnasium) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterGymnasium())


install()
