"""Vector quantisation: nearest-code lookup, its codebook gradient, usage statistics and EMA updates.

Mirrors ``csrc/codebook/``: :mod:`.lookup` (``codebook_lookup``), :mod:`.grad` (``codebook_grad``,
``vq_ste``, the lookup's autograd), :mod:`.usage` (``codebook_usage``, ``codebook_perplexity``,
``codebook_utilisation``, ``codebook_ema_update_``)."""
from .lookup import codebook_lookup
from .grad import codebook_grad, vq_ste
from .usage import codebook_ema_update_, codebook_perplexity, codebook_usage, codebook_utilisation

__all__ = [
    "codebook_ema_update_",
    "codebook_grad",
    "codebook_lookup",
    "codebook_perplexity",
    "codebook_usage",
    "codebook_utilisation",
    "vq_ste",
]
