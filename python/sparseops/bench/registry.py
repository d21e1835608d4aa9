"""The case registry: ``Case``, ``@register`` and ``unavailable``. See ``sparseops.bench`` for how to
add a case."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

CaseGenerator = Callable[[str, bool], Iterable["Case"]]

# (family, name) -> generator, in registration order; and the devices each registration has cases for.
REGISTRY: dict[tuple[str, str], CaseGenerator] = {}
DEVICES: dict[tuple[str, str], tuple[str, ...]] = {}
ALL_DEVICES = ("cpu", "cuda")

PRIMARY = "sparseops"


class Unavailable(NotImplementedError):
    """Raised by an impl that cannot run here (peer not installed, no kernel for this device, ...).
    The harness reports the impl as skipped with this reason."""


def unavailable(reason: str) -> Callable[[], object]:
    """An impl placeholder that is reported as skipped with ``reason``, e.g.
    ``impls["xformers"] = unavailable("xformers not installed (pip install sparseops[bench])")``."""

    def impl() -> object:
        raise Unavailable(reason)

    return impl


@dataclass
class Case:
    """One benchmark point: the same job done by several implementations.

    Attributes:
        label: short human-readable description, unique within its registration (e.g. ``"2:4 fp32
            4096x4096"``); defaults to ``params`` written out.
        params: the parameters as data (shape, dtype, ...), written to the JSON result file.
        impls: name -> zero-argument callable doing the job once, inputs already bound (created outside
            the timing). ``"sparseops"`` comes first; an impl that raises ``NotImplementedError`` (e.g.
            from :func:`unavailable`) is reported as skipped with the reason.
        baseline: name of the primary peer in ``impls``; the table's speedup is measured against it
            (ratios against every other impl are reported too).
        bytes: minimal bytes moved by one call (each input read once, each output written once), for
            memory-bound jobs: reported as GB/s and as a fraction of the read bandwidth.
        flops: floating-point operations of one call, for compute-bound jobs: reported as GFLOP/s
            (TFLOP/s on GPU) and as a fraction of the dense-matmul peak. Give exactly one of the two.
    """

    label: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    impls: dict[str, Callable[[], object]] = field(default_factory=dict)
    baseline: str = ""
    bytes: Optional[int] = None
    flops: Optional[int] = None

    def __post_init__(self) -> None:
        where = f"sparseops.bench.Case({self.label or self.params!r})"
        names = list(self.impls)
        if not names or names[0] != PRIMARY:
            raise ValueError(f"{where}: expected impls to start with {PRIMARY!r} (got {names})")
        if self.baseline == PRIMARY or self.baseline not in self.impls:
            raise ValueError(
                f"{where}: expected baseline to name one of the other impls {names[1:]} (got {self.baseline!r})"
            )
        if (self.bytes is None) == (self.flops is None):
            raise ValueError(f"{where}: expected exactly one of bytes= or flops= (got bytes={self.bytes}, flops={self.flops})")
        amount = self.bytes if self.bytes is not None else self.flops
        if not amount or amount <= 0:
            raise ValueError(f"{where}: expected a positive bytes/flops count (got {amount})")
        if not self.label:
            self.label = " ".join(f"{k}={v}" for k, v in self.params.items())

    @property
    def bound(self) -> str:
        """``"memory"`` (``bytes`` given) or ``"compute"`` (``flops`` given)."""
        return "memory" if self.bytes is not None else "compute"


def register(family: str, name: str, *, devices: tuple[str, ...] = ALL_DEVICES) -> Callable[[CaseGenerator], CaseGenerator]:
    """Registers ``fn(device: str, quick: bool) -> Iterable[Case]`` as ``family/name``, called only for
    the ``devices`` it has cases for (e.g. ``devices=("cuda",)`` for a CUDA-only backend).

    ``device`` is ``"cpu"`` or ``"cuda"``; ``quick`` asks for small shapes (the whole quick run must
    finish in under 2 minutes on 2 CPU cores). The harness collects one registration's cases (so
    their inputs are alive together), times them, and drops them before the next registration.
    """
    for what, value in (("family", family), ("name", name)):
        if not value or "/" in value or " " in value:
            raise ValueError(f"sparseops.bench.register: expected a non-empty {what} without '/' or spaces (got {value!r})")
    if not devices or not set(devices) <= set(ALL_DEVICES):
        raise ValueError(f"sparseops.bench.register: expected devices within {ALL_DEVICES} (got {devices!r})")

    def decorate(fn: CaseGenerator) -> CaseGenerator:
        key = (family, name)
        if key in REGISTRY and REGISTRY[key] is not fn:
            raise ValueError(f"sparseops.bench.register: {family}/{name} is registered twice")
        REGISTRY[key] = fn
        DEVICES[key] = tuple(devices)
        return fn

    return decorate


def discover() -> dict[tuple[str, str], CaseGenerator]:
    """Imports every module in ``sparseops.bench.cases`` (importing registers its cases) and returns
    the registry. A module that fails to import is an error, not a silently missing family."""
    from . import cases

    for info in pkgutil.iter_modules(cases.__path__):
        if info.name.startswith("_"):
            continue
        module = f"{cases.__name__}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as exc:  # re-raised with the module named
            raise ImportError(f"sparseops.bench: importing case module {module} failed: {exc!r}") from exc
    return REGISTRY
