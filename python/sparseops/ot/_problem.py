"""Input handling shared by the ot solvers: batching, dtype/shape checks with Python errors, and the
shape checks the fake kernels repeat."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

_DTYPES = (torch.float32, torch.float64)


def batch_problem(op: str, a: Tensor, b: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
    """(a [B, n], b [B, m], C [n, m] or [B, n, m], unbatched): 1-D marginals and a 2-D C are one problem."""
    for name, t in (("a", a), ("b", b), ("C", C)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected {name} to be a Tensor (got {type(t).__name__})")
    if C.dtype not in _DTYPES:
        raise TypeError(f"{op}: expected C to be float32 or float64 (got {C.dtype})")
    if a.dtype != C.dtype or b.dtype != C.dtype:
        raise TypeError(f"{op}: expected a, b and C to have one dtype (got {a.dtype}, {b.dtype}, {C.dtype})")
    unbatched = a.dim() == 1
    if unbatched:
        if b.dim() != 1 or C.dim() != 2:
            raise ValueError(f"{op}: with a 1-D a expected b 1-D and C 2-D (got b {tuple(b.shape)}, C {tuple(C.shape)})")
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    elif a.dim() != 2 or b.dim() != 2 or C.dim() not in (2, 3):
        raise ValueError(f"{op}: expected a [B, n], b [B, m], C [n, m] or [B, n, m] (got a {tuple(a.shape)}, "
                         f"b {tuple(b.shape)}, C {tuple(C.shape)})")
    if a.shape[0] != b.shape[0] or (C.dim() == 3 and C.shape[0] != a.shape[0]):
        raise ValueError(f"{op}: expected one batch size in a, b and C (got a {tuple(a.shape)}, b {tuple(b.shape)}, "
                         f"C {tuple(C.shape)})")
    if tuple(C.shape[-2:]) != (a.shape[1], b.shape[1]):
        raise ValueError(f"{op}: expected C's last two dims to be (n, m) = ({a.shape[1]}, {b.shape[1]}) from a and b "
                         f"(got {tuple(C.shape)})")
    return a, b, C, unbatched


def check_eps(op: str, eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise TypeError(f"{op}: expected eps to be a float (got {type(eps).__name__})")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{op}: expected eps to be finite and > 0 (got {eps})")
    return float(eps)


def check_rho(op: str, rho: Optional[float]) -> Optional[float]:
    if rho is None:
        return None
    if not (rho > 0):
        raise ValueError(f"{op}: expected rho > 0 or None (got {rho})")
    return float(rho)


def fake_problem_shapes(op: str, a: Tensor, b: Tensor, C: Tensor) -> tuple[int, int, int]:
    """The shape checks of csrc/ot/ot_checks.h's check_problem_shapes, for the fake kernels."""
    torch._check(C.dtype in _DTYPES, lambda: f"{op}: expected C to have dtype in {{Float, Double}} (got {C.dtype})")
    torch._check(a.dtype == C.dtype and b.dtype == C.dtype,
                 lambda: f"{op}: expected a, b and C to have one dtype (got {a.dtype}, {b.dtype}, {C.dtype})")
    torch._check(a.dim() == 2, lambda: f"{op}: expected a to be 2-D (got {a.dim()}-D)")
    torch._check(b.dim() == 2, lambda: f"{op}: expected b to be 2-D (got {b.dim()}-D)")
    torch._check(C.dim() in (2, 3), lambda: f"{op}: expected C to be [n, m] or [B, n, m] (got shape {tuple(C.shape)})")
    B, n, m = a.shape[0], a.shape[1], b.shape[1]
    torch._check(b.shape[0] == B, lambda: f"{op}: expected b.size(0) == a.size(0) (batch)")
    torch._check(C.shape[-2] == n and C.shape[-1] == m,
                 lambda: f"{op}: expected C's last two dims to be (n, m) = ({n}, {m}) from a and b")
    if C.dim() == 3:
        torch._check(C.shape[0] == B, lambda: f"{op}: expected C.size(0) == a.size(0) (batch)")
    torch._check(B >= 1 and n >= 1 and m >= 1, lambda: f"{op}: expected non-empty a [B, n] and b [B, m]")
    return B, n, m


def batch_potential(op: str, name: str, g: Optional[Tensor], b: Tensor, unbatched: bool) -> Optional[Tensor]:
    """A starting potential ``[m]`` (unbatched) or ``[B, m]`` as ``[B, m]``, checked against the batched
    target marginal b [B, m] (its dtype, device and shape); None stays None."""
    if g is None:
        return None
    if not isinstance(g, Tensor):
        raise TypeError(f"{op}: expected {name} to be a Tensor or None (got {type(g).__name__})")
    if g.dtype != b.dtype:
        raise TypeError(f"{op}: expected {name} to have C's dtype {b.dtype} (got {g.dtype})")
    if g.device != b.device:
        raise ValueError(f"{op}: expected {name} on C's device {b.device} (got {g.device})")
    want = (b.shape[1],) if unbatched else tuple(b.shape)
    if tuple(g.shape) != want:
        raise ValueError(f"{op}: expected {name} of shape {list(want)} like b (got {list(g.shape)})")
    return g.unsqueeze(0) if unbatched else g


def fake_g_init(op: str, g_init: Optional[Tensor], C: Tensor, B: int, m: int) -> None:
    """check_g_init's shape and dtype checks (csrc/ot/ot_checks.h), for the fake kernels."""
    if g_init is not None:
        torch._check(g_init.dtype == C.dtype and g_init.dim() == 2 and g_init.shape[0] == B and g_init.shape[1] == m,
                     lambda: f"{op}: expected g_init of shape [B, m] = [{B}, {m}] in C's dtype")
