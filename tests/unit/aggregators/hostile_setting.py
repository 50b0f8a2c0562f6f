"""The setting of the hostile-rows checks (issue 12, item 2), shared by ``test_hostile_rows.py`` and
``benchmarks/hostile_rows.py``: the declared counts a rule accepts, its documented breakdown, and the round
context the server would give it (a linear 3-class model and server data for the model-based rules)."""

from __future__ import annotations

import torch

from byzlab import aggregators
from byzlab.aggregators import RoundContext, context_fields

FMAX = float(torch.finfo(torch.float32).max)
OVERFLOW_FACTOR = 1e6  # "overflowing": a coordinate beyond this many times the honest rows' largest
CLASSES = 3
MODEL_RULES = frozenset(name for name in aggregators.names() if "model_fn" in aggregators.aggregator_class(name).needs)


def model_fn(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A linear 3-class model whose parameters are all of ``flat``: k x 3 weights, then 3 biases."""
    k = x.shape[1]
    return x @ flat[: k * CLASSES].view(k, CLASSES) + flat[k * CLASSES :]


def declared_range(name: str, n: int) -> list[int]:
    """Declared counts f >= 1 with 2f < n that the rule's ``check_setting`` accepts (default parameters)."""
    cls = aggregators.aggregator_class(name)
    feasible = []
    for f in range(1, (n - 1) // 2 + 1):
        try:
            cls.check_setting(cls.Params(), n, f)
        except ValueError:
            continue
        feasible.append(f)
    return feasible


def tolerated(name: str, n: int, f: int) -> int:
    """The rule's documented breakdown: ``tolerated_rows`` (how many arbitrary rows it withstands)."""
    cls = aggregators.aggregator_class(name)
    return cls.tolerated_rows(cls.Params(), n, f)


def context(name: str, n: int, d: int, f: int, seed: int) -> RoundContext:
    """Every client claims 50 samples (the rows are hostile, not the claims); for the model-based rules the
    global model is a teacher whose labels the server's data carries. Restricted to the rule's needs, as the
    server builds it."""
    g = torch.Generator().manual_seed(seed)
    fields = dict(client_ids=torch.arange(n), num_samples=torch.full((n,), 50.0), loss_gaps=torch.rand(n, generator=g),
                  num_byzantine=f, num_clients_total=n, generator=torch.Generator().manual_seed(seed), round=1)
    if name in MODEL_RULES:
        k = d // CLASSES - 1
        teacher = torch.cat([3 * torch.randn(k * CLASSES, generator=g), torch.zeros(CLASSES)])
        proxy = torch.randn(40, k, generator=g)
        fields.update(global_params=teacher, model_fn=model_fn, proxy_data=(proxy, model_fn(teacher, proxy).argmax(1)),
                      public_data=torch.randn(40, k, generator=g))
    return RoundContext(**fields).restricted_to(context_fields(aggregators.aggregator_class(name)))
