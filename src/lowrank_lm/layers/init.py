"""Initialisers for structured factors: Gaussian, spectral (truncated SVD), orthonormal and muP."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def orthonormal_(weight: torch.Tensor, std: float) -> None:
    """Fill each trailing (out, in) matrix with U @ Vh of a Gaussian draw: all singular values 1."""
    if weight.is_meta:
        return
    draw = torch.randn(weight.shape, dtype=torch.float32, device=weight.device) * std
    u, _, vh = torch.linalg.svd(draw, full_matrices=False)
    weight.copy_(u @ vh)


@torch.no_grad()
def spectral_(u: torch.Tensor, v: torch.Tensor, std: float) -> None:
    """U (out, R), V (R, in) from the SVD of a Gaussian W0 ~ N(0, std): U V = best rank-R approx of W0.

    U = U_R sqrt(S_R) and V = sqrt(S_R) V_R^T, so both factors carry half of the spectrum.
    """
    if u.is_meta:
        return
    rank = v.shape[0]
    w0 = torch.randn(u.shape[0], v.shape[1], dtype=torch.float32, device=u.device) * std
    uu, s, vh = torch.linalg.svd(w0, full_matrices=False)
    root = s[:rank].sqrt()
    u.copy_(uu[:, :rank] * root)
    v.copy_(root[:, None] * vh[:rank])


@torch.no_grad()
def normal_(weight: torch.Tensor, std: float) -> None:
    """Plain N(0, std) (the paper's dense init)."""
    if not weight.is_meta:
        weight.normal_(0.0, std)


def mup_std(fan_in: int, fan_out: int) -> float:
    """The maximal-update std of a factor: sqrt(1 / fan_in) min(1, sqrt(fan_out / fan_in)).

    Gaussian entries of this std give the factor a spectral norm of order sqrt(fan_out / fan_in) (Yang, Simon
    and Bernstein 2023, "A Spectral Condition for Feature Learning"); the BTT authors' ``cola_init`` (init_method
    'µP', compute-better-spent nn/cola_nn.py) draws every structured core so.
    """
    return math.sqrt(1.0 / fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
