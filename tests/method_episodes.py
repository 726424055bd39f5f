"""Shared test data for the method tests: Gaussian-class episodes and easyfsl's per-episode loop."""

from __future__ import annotations

import torch
from torch import nn


def episodes(e, n, k, q, d, sep, seed, offset=0.0):
    """float64 Gaussian-class episodes, support shuffled; returns support, labels, query, query labels."""
    g = torch.Generator().manual_seed(seed)
    centres = sep * torch.randn(e, n, 1, d, generator=g, dtype=torch.float64) + offset
    support = (centres + torch.randn(e, n, k, d, generator=g, dtype=torch.float64)).reshape(e, n * k, d)
    query = (centres + torch.randn(e, n, q, d, generator=g, dtype=torch.float64)).reshape(e, n * q, d)
    perm = torch.stack([torch.randperm(n * k, generator=g) for _ in range(e)])
    labels = torch.gather(torch.arange(n).repeat_interleave(k).repeat(e, 1), 1, perm)
    support = torch.gather(support, 1, perm[..., None].expand_as(support))
    return support, labels, query, torch.arange(n).repeat_interleave(q).repeat(e, 1)


def easyfsl_scores(model: nn.Module, support, labels, query) -> torch.Tensor:
    """easyfsl's evaluation of one task at a time: ``process_support_set`` then ``forward``."""
    out = []
    with torch.no_grad():
        for s, y, q in zip(support, labels, query):
            model.process_support_set(s, y)
            out.append(model(q))
    return torch.stack(out)
