"""Declarative HF tensor name <-> parameter slot mapping.

Every model module publishes ``hf_rules(cfg) -> list[Rule]``: one rule per HF tensor *family*. A rule's
``hf`` pattern has named fields (``{layer}``, ``{expert}``, ``{j}``...) that become the leading indices of
the parameter slot (stacked layers, stacked experts), in the order given by ``index``. ``to_param`` turns
the HF tensor (numpy, HF layout) into the slot's layout; ``to_hf`` is its inverse (for export). ``part``
writes the tensor into the k-th of n equal pieces of the slot's last axis (fused gate/up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np


def identity(a: np.ndarray) -> np.ndarray:
    return a


def transpose(a: np.ndarray) -> np.ndarray:
    """HF Linear [out, in] <-> ours [in, out] (a view: callers copy when they assign)."""
    return np.swapaxes(a, -1, -2)


@dataclass(frozen=True)
class Rule:
    hf: str
    param: str
    index: tuple[str, ...] = ()
    ranges: tuple[int, ...] = ()  # size of each index field (to enumerate names for export / checks)
    to_param: Callable[[np.ndarray], np.ndarray] = identity
    to_hf: Callable[[np.ndarray], np.ndarray] = identity
    part: tuple[int, int] | None = None
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.index) != len(self.ranges):
            raise ValueError(f"rule {self.hf}: index {self.index} and ranges {self.ranges} differ in length")
        pattern = re.escape(self.hf)
        for name in self.index:
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[0-9]+)")
        object.__setattr__(self, "_regex", re.compile(pattern + r"\Z"))

    def match(self, name: str) -> tuple[int, ...] | None:
        m = self._regex.match(name)
        if m is None:
            return None
        idx = tuple(int(m.group(n)) for n in self.index)
        if any(i >= r for i, r in zip(idx, self.ranges)):
            return None
        return idx

    def names(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """Every HF name this rule covers, with its slot index."""
        for idx in np.ndindex(*self.ranges) if self.ranges else [()]:
            yield self.hf.format(**dict(zip(self.index, idx))), tuple(int(i) for i in idx)


def prefixed(rules: Sequence[Rule], hf_prefix: str, param_prefix: str) -> list[Rule]:
    """Re-root a component's rules (e.g. the vision encoder's) under the model's HF and param prefixes."""
    out = []
    for r in rules:
        out.append(Rule(hf=hf_prefix + r.hf, param=param_prefix + r.param, index=r.index, ranges=r.ranges,
                        to_param=r.to_param, to_hf=r.to_hf, part=r.part))
    return out


def linear_rule(hf: str, param: str, index=(), ranges=(), part=None) -> Rule:
    """An HF nn.Linear weight ([out, in]) stored here as [in, out]."""
    return Rule(hf, param, tuple(index), tuple(ranges), transpose, transpose, part)


def copy_rule(hf: str, param: str, index=(), ranges=()) -> Rule:
    """A tensor stored with the same layout (norm weights, biases, embeddings)."""
    return Rule(hf, param, tuple(index), tuple(ranges))
