"""Let ``import torchvision`` succeed when its compiled operators did not load (a CUDA build of torchvision beside
the CPU build of torch, as PyPI serves them for torch 2.13).

torchvision then still registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` and fails with
"operator torchvision::nms does not exist", which breaks timm and even transformers (it imports torchvision when
installed). This hook, installed into tunelab's virtualenv by scripts/setup.sh as a ``.pth`` file, declares those two
operator schemas just before that registration, only when torchvision's own operators are missing. Nothing else
changes: the transforms and ``ops.misc`` layers that timm uses are pure Python; calling ``torchvision.ops.nms``
still fails, with torch's "no kernel" error. Where torchvision's operators load (a matching build, any GPU machine),
the hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

_LIBRARIES: list[Any] = []  # torch drops a schema when its Library object is collected


class _DeclareMissingOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "torchvision._meta_registrations":
            _declare_if_missing()
        return None  # the normal finders load the module


def _declare_if_missing() -> None:
    import torch
    import torchvision.extension

    if torchvision.extension._has_ops():
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        try:
            getattr(torch.ops.torchvision, op)
        except (AttributeError, RuntimeError):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(library)


if not any(isinstance(finder, _DeclareMissingOps) for finder in sys.meta_path):
    sys.meta_path.insert(0, _DeclareMissingOps())
