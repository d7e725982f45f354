"""Hyper-parameters of one meta-training run (the things a sweep searches over)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class HParams:
    alpha: float = 1e-2  # inner step size, eq. (1); Meta-SGD's initial alpha
    beta: float = 1e-3  # outer (Adam) step size, eq. (2); Reptile's epsilon
    temperature: float = 1.0  # Gumbel-Softmax temperature c, eq. (10)-(11); masked variants only
    inner_steps: int = 1  # k inner steps during meta-training
    meta_batch: int = 25  # tasks per outer step
    mask_eval: Literal["sample", "threshold"] = "sample"  # authors' code samples at test time
    zeta_init: float = 0.0  # paper section 6.1: zeta = 0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and value == value and value != float("inf")):
                raise ValueError(f"{name} must be a positive finite number (got {value!r})")
        if int(self.inner_steps) != self.inner_steps or self.inner_steps < 1:
            raise ValueError(f"inner_steps must be an integer >= 1 (got {self.inner_steps!r})")
        if int(self.meta_batch) != self.meta_batch or self.meta_batch < 1:
            raise ValueError(f"meta_batch must be an integer >= 1 (got {self.meta_batch!r})")
        if self.mask_eval not in ("sample", "threshold"):
            raise ValueError(f"mask_eval must be sample or threshold (got {self.mask_eval!r})")

    def as_dict(self) -> dict:
        return asdict(self)
