"""Keep ``import torchvision`` working where its compiled operators cannot load.

The only torchvision wheel that matches a CPU-only torch build on some registries is a CUDA build: its ``_C``
extension fails to load, and ``torchvision/_meta_registrations.py`` then raises
``RuntimeError: operator torchvision::nms does not exist`` on import. That breaks ``open_clip``, ``timm``,
``evaluate`` and the ``accelerate`` command, none of which expr needs torchvision's C++ ops for.

A ``.pth`` file installed next to the package calls :func:`install` at interpreter start-up. It only adds a
meta-path hook; nothing is imported until something imports torchvision. The hook then tries to load torchvision's
own compiled library. If that works (any machine with a matching torchvision, e.g. a GPU install) nothing else
happens. Only if it fails are the schemas of ``torchvision::nms`` and ``torchvision::qnms`` registered, so the
Python parts of torchvision import; its compiled ops (``nms``, ``decode_jpeg``, ...) still raise if called.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the torch.library.Library alive; its definitions vanish when it is collected
patched = False  # True once schemas were registered in this process (tests and diagnostics read this)


def _torchvision_ops_load() -> bool:
    """Try to load torchvision's compiled extension the way torchvision itself does."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to fix
    import torch

    folder = list(spec.submodule_search_locations)[0]
    libs = [f for f in os.listdir(folder) if f.startswith("_C") and f.endswith((".so", ".pyd", ".dylib"))]
    if not libs:
        return False
    try:
        torch.ops.load_library(os.path.join(folder, libs[0]))
    except (OSError, RuntimeError):
        return False
    return hasattr(torch.ops.torchvision, "nms")


def register_schemas() -> None:
    """Define the operator schemas torchvision's fake-tensor registrations need, if they are missing."""
    global _LIBRARY, patched
    import torch

    if _LIBRARY is not None:
        return
    missing = {}
    for name, schema in _SCHEMAS.items():
        try:
            getattr(torch.ops.torchvision, name)
        except (AttributeError, RuntimeError):
            missing[name] = schema
    if not missing:
        return
    _LIBRARY = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - must outlive this function
    for schema in missing.values():
        _LIBRARY.define(schema)
    patched = True


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 - importlib protocol
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)  # one-shot; also prevents recursion through find_spec below
        if os.environ.get("EXPR_NO_TORCHVISION_COMPAT") != "1" and not _torchvision_ops_load():
            register_schemas()
        return None  # let the normal finders import torchvision


def install() -> None:
    """Add the lazy hook (idempotent; cheap: imports nothing)."""
    if "torchvision" in sys.modules or any(isinstance(f, _Hook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Hook())
