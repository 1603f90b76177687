"""Statistics of a classifier's predictions on generated samples.

They complement the Frechet distance with readable diagnoses: low confidence means blurry or
ambiguous samples, a class histogram far from uniform means mode dropping, and the Inception
Score analogue exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016) rewards both (its maximum is
the number of classes). For class-conditional samples, accuracy w.r.t. the intended labels says
whether the conditioning works.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from antdiff.errors import AntError


def classifier_stats(logits: Tensor, labels: Tensor | None = None) -> dict[str, float]:
    """confidence, class_kl (KL of the argmax histogram to uniform, nats), inception_score,
    and accuracy when the intended `labels` [N] are given."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise AntError(f"logits must be a non-empty [N, K] tensor; got {tuple(logits.shape)}")
    logp = torch.log_softmax(logits.detach().cpu().to(torch.float64), dim=1)
    p = logp.exp()
    n, k = p.shape
    pred = p.argmax(dim=1)
    hist = torch.bincount(pred, minlength=k).to(torch.float64) / n
    nz = hist > 0
    class_kl = float((hist[nz] * (hist[nz] * k).log()).sum())
    log_marginal = p.mean(dim=0).clamp_min(1e-300).log()
    mean_kl = float((p * (logp - log_marginal)).sum(dim=1).mean())
    out = {
        "confidence": float(p.max(dim=1).values.mean()),
        "class_kl": class_kl,
        "inception_score": math.exp(mean_kl),
    }
    if labels is not None:
        labels = torch.as_tensor(labels).cpu().to(torch.int64).reshape(-1)
        if labels.shape[0] != n:
            raise AntError(f"{labels.shape[0]} labels for {n} samples")
        out["accuracy"] = float((pred == labels).to(torch.float64).mean())
    return out
