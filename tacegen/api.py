"""The top-level Python API: ``tacegen.Calculator``, ``tacegen.load``, ``tacegen.load_checkpoint``.

``tacegen.Calculator`` is the runtime's ASE calculator plus :meth:`Calculator.from_checkpoint`;
it lives here, above the runtime, because checkpoints belong to the training application
(the runtime never imports applications or the compiler).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from tacegen.runtime.calculator import Calculator as _RuntimeCalculator
from tacegen.runtime.loader import load
from tacegen.train.checkpoint import load_checkpoint

__all__ = ["Calculator", "load", "load_checkpoint"]


class Calculator(_RuntimeCalculator):
    __doc__ = _RuntimeCalculator.__doc__

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], backend: str = "torch", device: Union[str, torch.device] = "cpu",
                        use_ema: bool = True, model_dir: Optional[Union[str, Path]] = None, **kwargs) -> "Calculator":
        """An ASE calculator for the model trained in checkpoint ``path`` (``best.pt`` or ``last.pt``).

        ``backend`` "torch" or "numba" (the Numba programs evaluate the same weights);
        ``use_ema`` loads the EMA weights (default, as validation judged them).
        """
        model = load_checkpoint(path, use_ema=use_ema, device=device, model_dir=model_dir)
        return cls(model, backend=backend, device=device, **kwargs)
