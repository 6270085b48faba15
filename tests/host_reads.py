"""Counting what the library's own code does with tensors, seen through torch's function mode:
reads back to the host (each one a GPU->host sync on a GPU) and torch calls per source file."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

ALIGN = str(Path(__file__).resolve().parent.parent / "align")
TORCH = str(Path(torch.__file__).resolve().parent)
# Tensor methods that hand a value to Python: on a GPU each waits for the queued kernels
READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.nonzero,
    torch.nonzero,
}


def _caller() -> tuple[str, str]:
    """(file, function) of the first frame outside torch: the code that called the tensor
    method."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(TORCH):
        frame = frame.f_back
    return ("", "") if frame is None else (frame.f_code.co_filename, frame.f_code.co_name)


class LibraryCalls(TorchFunctionMode):
    """Inside `with LibraryCalls() as calls:`, `calls.reads` counts host reads made by code
    under align/ by "file:function", `calls.by_file` every torch call made from each file."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.by_file: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        file, function = _caller()
        if file.startswith(ALIGN):
            name = file[len(ALIGN) + 1 :]
            self.by_file[name] += 1
            if func in READS:
                self.reads[f"{name}:{function}"] += 1
        return func(*args, **(kwargs or {}))
