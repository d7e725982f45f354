"""Random affine distortions of images (Koch, Zemel & Salakhutdinov 2015, section 4.2).

Each image gets its own transform T = f(theta, rho_x, rho_y, s_x, s_y, t_x, t_y) with rotation
theta ~ U[-10, 10] degrees, shears rho ~ U[-0.3, 0.3], scales s ~ U[0.8, 1.2] and translations
t ~ U[-2, 2] pixels, each of the four components present with probability 1/2 (else the identity).
Applied by bilinear resampling; pixels from outside the image are 0 (our Omniglot background).
Seeded by a torch.Generator, so a training run draws the same distortions again on resume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATION_DEG = 10.0
SHEAR = 0.3
SCALE = (0.8, 1.2)
SHIFT_PX = 2.0


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def affine_matrices(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 2, 3] affine maps in normalised coordinates ([-1, 1] across `size` pixels)."""
    on = torch.rand(n, 4, generator=generator) < 0.5  # rotation, shear, scale, translation present
    theta = torch.where(on[:, 0], _uniform(generator, n, -ROTATION_DEG, ROTATION_DEG), 0.0) * math.pi / 180
    shear = torch.where(on[:, 1:2], torch.stack([_uniform(generator, n, -SHEAR, SHEAR) for _ in range(2)], 1), 0.0)
    scale = torch.where(on[:, 2:3], torch.stack([_uniform(generator, n, *SCALE) for _ in range(2)], 1), 1.0)
    shift = torch.where(on[:, 3:4], torch.stack([_uniform(generator, n, -SHIFT_PX, SHIFT_PX) for _ in range(2)], 1),
                        0.0) * 2.0 / size
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    shearing = torch.stack([torch.stack([torch.ones(n, dtype=torch.float64), shear[:, 0]], -1),
                            torch.stack([shear[:, 1], torch.ones(n, dtype=torch.float64)], -1)], -2)
    linear = rotation @ shearing @ torch.diag_embed(scale)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)


def distort(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random affine distortion of every image of [..., C, H, W] (H = W), same shape and dtype."""
    shape = images.shape
    flat = images.reshape(-1, *shape[-3:])
    theta = affine_matrices(flat.shape[0], shape[-1], generator).to(flat.dtype)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    return F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(shape)
