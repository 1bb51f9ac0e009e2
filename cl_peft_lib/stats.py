"""Statistics over seeds: the one summary every table, grid and README number goes through.

A result over seeds is reported as the mean, the *sample* standard deviation (``ddof=1``)
and the 95% Student-t confidence interval of the mean,
``mean ± t(0.975, n - 1) * s / sqrt(n)``. With a single seed the standard deviation and the
interval are undefined (``None``), and the formatter says "(1 seed)" instead of a
misleading "± 0.0".

Comparing two methods run on the same seeds is a *paired* question: :func:`paired`
matches the two by seed (never by position), summarizes the per-seed differences
``a_i - b_i`` the same way and counts the seeds where ``a`` is ahead.

Example::

    >>> s = describe({0: 52.0, 1: 58.0, 2: 46.6})
    >>> format_ci(s)
    '52.2 ± 5.7 [38.0, 66.4]'
    >>> format_ci(describe([52.0]))
    '52.0 (1 seed)'

Chapter: ``notebooks/05_head_to_head.ipynb`` (the head-to-head tables and the paired
differences L2L − L2P, S-LoRA − S-Prompts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

__all__ = ["Summary", "PairedSummary", "describe", "paired", "format_ci", "format_paired", "t_quantile"]


def t_quantile(level: float, df: int) -> float:
    """Two-sided Student-t critical value: ``scipy.stats.t.ppf(0.5 + level / 2, df)``."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")


def _as_seeded(values: Mapping[int, float] | Sequence[float], seeds: Sequence[int] | None
               ) -> tuple[tuple[float, ...], tuple[int, ...] | None]:
    if isinstance(values, Mapping):
        if seeds is not None:
            raise ValueError("pass seeds either as the mapping's keys or as `seeds`, not both")
        seeds, values = list(values.keys()), list(values.values())
    vals = tuple(float(v) for v in values)
    if seeds is not None:
        seeds = tuple(int(s) for s in seeds)
        if len(seeds) != len(vals):
            raise ValueError(f"{len(seeds)} seeds for {len(vals)} values")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"duplicate seeds {sorted(seeds)}")
    return vals, seeds


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and t confidence interval of per-seed values.

    Attributes:
        mean: arithmetic mean.
        std: sample standard deviation (``ddof=1``); ``None`` with one value.
        n: number of values.
        ci_low: lower end of the ``level`` confidence interval of the mean; ``None`` with one value.
        ci_high: upper end; ``None`` with one value.
        level: confidence level of the interval (0.95).
        values: the values summarized, in the order given.
        seeds: the seed of each value, when known.
    """

    mean: float
    std: float | None
    n: int
    ci_low: float | None
    ci_high: float | None
    level: float = 0.95
    values: tuple[float, ...] = field(default=(), repr=False)
    seeds: tuple[int, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_level(self.level)
        if self.n < 1:
            raise ValueError("a summary needs at least one value")
        if self.values and len(self.values) != self.n:
            raise ValueError(f"n={self.n} but {len(self.values)} values")
        if (self.std is None) != (self.n < 2) or (self.ci_low is None) != (self.n < 2):
            raise ValueError("std and the interval are defined exactly when n >= 2")

    @property
    def sem(self) -> float | None:
        """Standard error of the mean, ``s / sqrt(n)`` (``None`` with one value)."""
        return None if self.std is None else self.std / math.sqrt(self.n)

    @property
    def half_width(self) -> float | None:
        """Half the width of the confidence interval (``None`` with one value)."""
        return None if self.ci_high is None else self.ci_high - self.mean

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``mean, std, n, ci_low, ci_high, ci_level, values`` (+ ``seeds`` when known)."""
        d: dict[str, Any] = {"mean": self.mean, "std": self.std, "n": self.n, "ci_low": self.ci_low,
                             "ci_high": self.ci_high, "ci_level": self.level, "values": list(self.values)}
        if self.seeds is not None:
            d["seeds"] = list(self.seeds)
        return d


def describe(values: Mapping[int, float] | Sequence[float], seeds: Sequence[int] | None = None,
             level: float = 0.95) -> Summary:
    """Summarize per-seed values: mean, sample std (``ddof=1``), n and the Student-t interval.

    Args:
        values: the per-seed values, as a sequence or as a ``{seed: value}`` mapping.
        seeds: the seed of each value of a sequence (optional).
        level: confidence level of the interval of the mean.

    Returns:
        A :class:`Summary`; with one value its ``std``, ``ci_low`` and ``ci_high`` are ``None``.

    Raises:
        ValueError: no values, a value that is not finite, or seeds that do not fit the values.
    """
    _check_level(level)
    vals, seeds = _as_seeded(values, seeds)
    n = len(vals)
    if n == 0:
        raise ValueError("no values to summarize")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"values must be finite, got {bad}")
    mean = math.fsum(vals) / n
    if n == 1:
        return Summary(mean, None, 1, None, None, level, vals, seeds)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    h = t_quantile(level, n - 1) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - h, mean + h, level, vals, seeds)


@dataclass(frozen=True)
class PairedSummary:
    """Per-seed differences ``a - b`` over the seeds both sides have.

    Attributes:
        diff: :class:`Summary` of the differences (its ``seeds`` are the common seeds, sorted).
        wins: seeds where ``a > b``.
        ties: seeds where ``a == b``.
        losses: seeds where ``a < b``.
        only_a: seeds present in ``a`` alone (left out of the differences).
        only_b: seeds present in ``b`` alone.
    """

    diff: Summary
    wins: int
    ties: int
    losses: int
    only_a: tuple[int, ...] = ()
    only_b: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.wins + self.ties + self.losses != self.diff.n:
            raise ValueError("wins + ties + losses must equal the number of paired seeds")

    @property
    def n(self) -> int:
        """Number of paired seeds."""
        return self.diff.n

    @property
    def frac_wins(self) -> float:
        """Fraction of the paired seeds where ``a > b``."""
        return self.wins / self.diff.n

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the difference summary plus ``wins, ties, losses, frac_wins, only_a, only_b``."""
        return {**self.diff.to_dict(), "wins": self.wins, "ties": self.ties, "losses": self.losses,
                "frac_wins": self.frac_wins, "only_a": list(self.only_a), "only_b": list(self.only_b)}


def _seed_map(x: Mapping[int, float] | Summary, name: str) -> dict[int, float]:
    if isinstance(x, Summary):
        if x.seeds is None:
            raise ValueError(f"{name}: a Summary without seeds cannot be paired (pairing is by seed)")
        return dict(zip(x.seeds, x.values))
    if not isinstance(x, Mapping):
        raise TypeError(f"{name}: pass {{seed: value}} (pairing is by seed, not by position), got {type(x).__name__}")
    return {int(k): float(v) for k, v in x.items()}


def paired(a: Mapping[int, float] | Summary, b: Mapping[int, float] | Summary, level: float = 0.95) -> PairedSummary:
    """Paired comparison of two methods run on the same seeds: ``a_i - b_i`` matched by seed.

    Args:
        a: ``{seed: value}`` (or a :class:`Summary` with seeds) of the first method.
        b: the same for the second method.
        level: confidence level of the interval of the mean difference.

    Returns:
        A :class:`PairedSummary` over the seeds present in both; the others are listed in
        ``only_a`` / ``only_b``.

    Raises:
        ValueError: the two sides share no seed.
    """
    ma, mb = _seed_map(a, "a"), _seed_map(b, "b")
    common = sorted(set(ma) & set(mb))
    if not common:
        raise ValueError(f"no seed in common (a: {sorted(ma)}, b: {sorted(mb)})")
    d = [ma[s] - mb[s] for s in common]
    return PairedSummary(describe(d, seeds=common, level=level), wins=sum(x > 0 for x in d),
                         ties=sum(x == 0 for x in d), losses=sum(x < 0 for x in d),
                         only_a=tuple(sorted(set(ma) - set(mb))), only_b=tuple(sorted(set(mb) - set(ma))))


def _num(x: float, digits: int, signed: bool) -> str:
    x = round(x, digits) or 0.0  # no "-0.0"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def format_ci(s: Summary, digits: int = 1, signed: bool = False, ci: bool = True) -> str:
    """``"52.2 ± 6.2 [36.8, 67.6]"`` (mean ± sample std [95% interval]) or ``"52.2 (1 seed)"``.

    Args:
        s: the summary.
        digits: decimals.
        signed: print the mean with its sign (for differences).
        ci: append the confidence interval.
    """
    m = _num(s.mean, digits, signed)
    if s.std is None:
        return f"{m} (1 seed)"
    out = f"{m} ± {s.std:.{digits}f}"
    if ci:
        out += f" [{_num(s.ci_low, digits, False)}, {_num(s.ci_high, digits, False)}]"
    return out


def format_paired(p: PairedSummary, digits: int = 1, a: str = "a", b: str = "b") -> str:
    """The paired difference ``a - b`` with its interval and the count of seeds where ``a`` is ahead.

    Example::

        >>> format_paired(paired({0: 89.6, 1: 89.4, 2: 89.7}, {0: 88.5, 1: 88.6, 2: 88.4}), a="x", b="y")
        '+1.1 ± 0.3 [0.4, 1.7]; x > y on 3/3 seeds'
    """
    out = f"{format_ci(p.diff, digits, signed=True)}; {a} > {b} on {p.wins}/{p.n} seed{'s' if p.n > 1 else ''}"
    missing = [f"{name} alone: {list(s)}" for name, s in ((a, p.only_a), (b, p.only_b)) if s]
    return out + (f" (unpaired seeds left out, {'; '.join(missing)})" if missing else "")
