"""Exponential moving average of the generator's weights (beyond the paper; often gives cleaner samples)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copy of a module's state: parameters averaged, buffers (e.g. spectral-norm vectors) copied.

    The shadow is keyed like `module.state_dict()`, so it loads into a fresh copy of the module and is exported
    beside G. The effective decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so early
    averages are not dominated by the random initialization. Kept in float32 whatever the training precision.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} must be in (0, 1)")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights into the average (call after each optimizer step)."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = dict(module.named_parameters())
        for name, value in module.state_dict().items():
            if name in params:
                self.shadow[name].lerp_(value.detach().float(), 1.0 - decay)
            else:
                self.shadow[name].copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the generator: keys differ {sorted(missing)[:5]}")
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
