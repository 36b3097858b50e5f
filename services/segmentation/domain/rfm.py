"""RFM scores and segments over the customers with a completed order in the lookback (SPEC.md Customers)."""

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from itertools import product

SCORES = range(1, 6)


class RfmSegment(StrEnum):
    HIBERNATING = "hibernating"
    AT_RISK = "at_risk"
    CANNOT_LOSE = "cannot_lose"
    ABOUT_TO_SLEEP = "about_to_sleep"
    NEED_ATTENTION = "need_attention"
    LOYAL = "loyal"
    PROMISING = "promising"
    POTENTIAL_LOYALIST = "potential_loyalist"
    NEW = "new"
    CHAMPION = "champion"


# The SPEC.md table as written: (R scores, F scores) -> segment. It covers each of the 25 cells exactly
# once, so no cell needs a fallback segment (tests check this cell by cell).
_SEGMENT_TABLE = (
    ((1, 2), (1, 2), RfmSegment.HIBERNATING),
    ((1, 2), (3, 4), RfmSegment.AT_RISK),
    ((1, 2), (5,), RfmSegment.CANNOT_LOSE),
    ((3,), (1, 2), RfmSegment.ABOUT_TO_SLEEP),
    ((3,), (3,), RfmSegment.NEED_ATTENTION),
    ((3, 4), (4, 5), RfmSegment.LOYAL),
    ((4,), (1,), RfmSegment.PROMISING),
    ((4, 5), (2, 3), RfmSegment.POTENTIAL_LOYALIST),
    ((5,), (1,), RfmSegment.NEW),
    ((5,), (4, 5), RfmSegment.CHAMPION),
)
_SEGMENT_BY_CELL = {
    cell: segment for r_scores, f_scores, segment in _SEGMENT_TABLE for cell in product(r_scores, f_scores)
}


@dataclass(frozen=True, slots=True)
class RfmFigures:
    """R, F and M of one customer of the RFM population (SPEC.md Customers, RFM)."""

    recency_days: int
    frequency: int
    monetary: Decimal


@dataclass(frozen=True, slots=True)
class RfmScore:
    r_score: int
    f_score: int
    m_score: int
    segment: RfmSegment


@dataclass(frozen=True, slots=True)
class RfmReport:
    """Per-customer scores, plus counts per segment and per (r_score, f_score) cell, zeros included."""

    scores: dict[str, RfmScore]
    segment_counts: dict[RfmSegment, int]
    cell_counts: dict[tuple[int, int], int]


def rfm_segment(r_score: int, f_score: int) -> RfmSegment:
    """Segment of an (R score, F score) cell (SPEC.md Customers, RFM segment)."""
    return _SEGMENT_BY_CELL[r_score, f_score]


def _quintile_scores(values: Iterable[int | Decimal], descending: bool = False) -> dict[int | Decimal, int]:
    ordered = sorted(values, reverse=descending)
    size = len(ordered)
    scores: dict[int | Decimal, int] = {}
    for position, value in enumerate(ordered):
        # A value's first position in sorted order counts the values strictly smaller (strictly larger
        # when descending); the SPEC scores by that count, so equal values share a score.
        scores.setdefault(value, 1 + 5 * position // size)
    return scores


def score_population(population: Mapping[str, RfmFigures]) -> RfmReport:
    """Quintile scores of every customer of the RFM population, O(N log N) (SPEC.md Customers, RFM)."""
    if any(figures.frequency < 1 for figures in population.values()):
        raise ValueError("the RFM population holds only customers with a completed order in the lookback")
    r_scores = _quintile_scores((f.recency_days for f in population.values()), descending=True)
    f_scores = _quintile_scores(f.frequency for f in population.values())
    m_scores = _quintile_scores(f.monetary for f in population.values())

    # At most 125 distinct scores: sharing them keeps a million-customer run light.
    shared: dict[tuple[int, int, int], RfmScore] = {}
    scores: dict[str, RfmScore] = {}
    for person_key, figures in population.items():
        cell = r_scores[figures.recency_days], f_scores[figures.frequency], m_scores[figures.monetary]
        score = shared.get(cell)
        if score is None:
            score = shared[cell] = RfmScore(*cell, rfm_segment(cell[0], cell[1]))
        scores[person_key] = score

    segments = Counter(score.segment for score in scores.values())
    cells = Counter((score.r_score, score.f_score) for score in scores.values())
    return RfmReport(
        scores=scores,
        segment_counts={segment: segments[segment] for segment in RfmSegment},
        cell_counts={cell: cells[cell] for cell in product(SCORES, SCORES)},
    )
