"""scikit-build-core dynamic-metadata provider for sparseops' dependencies (pyproject.toml,
[[tool.dynamic-metadata]]). A wheel requires the exact torch release it was compiled against: its _C
links that release's C++ ABI and libraries, so pip must not pair it with another. An sdist keeps the
loose requirement; the wheel built from it is pinned to the torch of its build environment."""
from __future__ import annotations

from typing import Any, Mapping

_LOOSE = "torch>=2.4"
_OTHERS = ["numpy"]
_state = "metadata_wheel"


def build_state(state: str) -> None:
    global _state
    _state = state


def dynamic_wheel(settings: Mapping[str, Any]) -> dict[str, bool]:
    return {"dependencies": True}  # an sdist's wheels pin whichever torch they are built against


def dynamic_metadata(settings: Mapping[str, Any], project: Mapping[str, Any]) -> dict[str, list[str]]:
    if _state == "sdist":
        return {"dependencies": [_LOOSE, *_OTHERS]}
    import torch  # the build environment's torch: the one _C is compiled against

    public = torch.__version__.split("+")[0]  # 2.14.1 also matches local builds such as 2.14.1+cu130
    return {"dependencies": [f"torch=={public}", *_OTHERS]}
