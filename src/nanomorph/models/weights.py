"""Loading PyTorch weight files (encoders, checkpoints, packaged U-Nets) safely, with one clear line on failure.

Every .pt nanomorph reads goes through `load_weights`: `torch.load(weights_only=True)` never runs code from the
file, and a file that would need to (a pickle with arbitrary objects, as a malicious file has) is refused with a
line naming it, never retried unsafely.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from nanomorph.errors import NanomorphError


class UnsafeWeightsError(NanomorphError):
    """A weights file that holds more than tensors and plain containers: refused, for safety."""


def load_weights(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; unsafe or unreadable files raise one-line errors."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NanomorphError(f"{path}: no such file") from None
    except pickle.UnpicklingError as exc:
        # torch names what it refused: a global (a class or function the pickle would import and call) means
        # code; an unsupported opcode means bytes that are no pickle at all (an image renamed .pt, say)
        if "unsupported global" in str(exc).lower():
            raise UnsafeWeightsError(f"{path}: refused for safety: it holds Python objects other than weights, "
                                     "which loading would have to execute; nanomorph loads weights only") from None
        raise NanomorphError(f"{path}: not a PyTorch weights file ({_first_line(exc)})") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as exc:
        raise NanomorphError(f"{path}: not a readable PyTorch weights file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
