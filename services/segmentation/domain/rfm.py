"""RFM scores and segments over the customers with a completed order in the lookback (SPEC.md Customers)."""

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
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


def quintile_ranks(size: int) -> tuple[int, ...]:
    """The 1-based ranks ceil(k x N / 5), k = 1..4, whose values cut N sorted values into the five scores."""
    return tuple(-(-k * size // 5) for k in range(1, 5)) if size else ()


@dataclass(frozen=True, slots=True)
class RfmCuts:
    """The values at the quintile ranks of each dimension of an RFM population.

    SPEC.md scores a value 1 + floor(5 x c / N), c counting the values strictly smaller (for R: strictly
    larger). floor(5c / N) is the number of k in 1..4 with c >= ceil(kN / 5), and c >= r holds exactly when
    the r-th smallest value is smaller than the value scored. So a customer scores 1 plus the number of
    cuts its value exceeds (for R: falls below), and the cuts are all a database has to hand over.
    """

    customers: int
    recency_days: tuple[int, ...]  # the ceil(kN/5)-th largest recency, k = 1..4
    frequency: tuple[int, ...]  # the ceil(kN/5)-th smallest frequency
    monetary: tuple[Decimal, ...] | tuple[int, ...]  # the ceil(kN/5)-th smallest monetary (or in cents)
    _recency_ascending: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_recency_ascending", self.recency_days[::-1])

    def score(self, figures: RfmFigures) -> RfmScore:
        """The scores and segment of a member of this population."""
        return self.score_values(figures.recency_days, figures.frequency, figures.monetary)

    def r_score(self, recency_days: int) -> int:
        # The cuts strictly above the value (bisect: the cuts are in order).
        return 1 + len(self._recency_ascending) - bisect_right(self._recency_ascending, recency_days)

    def f_score(self, frequency: int) -> int:
        return 1 + bisect_left(self.frequency, frequency)  # the cuts strictly below the value

    def segment_of(self, recency_days: int, frequency: int) -> RfmSegment:
        """The RFM segment of a member with this recency and frequency (M does not enter it)."""
        return _SEGMENT_BY_CELL[self.r_score(recency_days), self.f_score(frequency)]

    def score_values(self, recency_days: int, frequency: int, monetary: Decimal | int) -> RfmScore:
        """``score`` from the bare values, monetary in the unit the cuts were taken in."""
        cell = (self.r_score(recency_days), self.f_score(frequency), 1 + bisect_left(self.monetary, monetary))
        score = _SHARED_SCORES.get(cell)
        if score is None:
            score = _SHARED_SCORES[cell] = RfmScore(*cell, rfm_segment(cell[0], cell[1]))
        return score


# At most 125 distinct scores: sharing them keeps a million-customer run light.
_SHARED_SCORES: dict[tuple[int, int, int], RfmScore] = {}


def rfm_cuts(population: Collection[RfmFigures]) -> RfmCuts:
    """The quintile cuts of an RFM population, O(N log N)."""
    return cuts_of([f.recency_days for f in population], [f.frequency for f in population],
                   [f.monetary for f in population])


def nth_smallest(counts: Mapping[int, int], ranks: Iterable[int], *, largest: bool = False) -> tuple[int, ...]:
    """The values at these 1-based ranks of a population given as value -> how many have it."""
    ordered = sorted(counts.items(), reverse=largest)
    found = []
    for rank in ranks:
        seen = 0
        for value, count in ordered:
            seen += count
            if seen >= rank:
                found.append(value)
                break
    return tuple(found)


def cuts_of_counts(recency_counts: Mapping[int, int], frequency_counts: Mapping[int, int],
                   monetary: tuple[Decimal, ...] | tuple[int, ...] = ()) -> RfmCuts:
    """The quintile cuts of a population given as a count per recency and per frequency value (and its
    monetary cuts, if M scores are wanted)."""
    size = sum(recency_counts.values())
    ranks = quintile_ranks(size)
    return RfmCuts(customers=size, recency_days=nth_smallest(recency_counts, ranks, largest=True),
                   frequency=nth_smallest(frequency_counts, ranks), monetary=monetary)


def cuts_of(recency_days: list[int], frequency: list[int],
            monetary: list[Decimal] | list[int] | None) -> RfmCuts:
    """The quintile cuts of a population given as one list per dimension (same length; sorted in place).

    Without ``monetary`` the cuts decide segments (``segment_of``) but not M scores.
    """
    ranks = quintile_ranks(len(recency_days))
    recency_days.sort(reverse=True)
    frequency.sort()
    if monetary is not None:
        monetary.sort()
    return RfmCuts(
        customers=len(recency_days),
        recency_days=tuple(recency_days[rank - 1] for rank in ranks),
        frequency=tuple(frequency[rank - 1] for rank in ranks),
        monetary=() if monetary is None else tuple(monetary[rank - 1] for rank in ranks),
    )


@dataclass(frozen=True, slots=True)
class RfmCounts:
    """How many customers of an RFM population are in each segment and each (r_score, f_score) cell, zeros
    included: ``RfmReport`` without the per-customer scores."""

    customers: int
    segment_counts: dict[RfmSegment, int]
    cell_counts: dict[tuple[int, int], int]


def rfm_counts(histogram: Iterable[tuple[int, int, int]]) -> RfmCounts:
    """The segment and cell counts of a population given as ``(recency_days, frequency, customers)`` per pair
    present: the R and F cuts come from the same counts, so nobody is scored one by one (segments do not
    depend on M)."""
    pairs = list(histogram)
    recency_counts: Counter[int] = Counter()
    frequency_counts: Counter[int] = Counter()
    for recency_days, frequency, customers in pairs:
        recency_counts[recency_days] += customers
        frequency_counts[frequency] += customers
    cuts = cuts_of_counts(recency_counts, frequency_counts)
    cells: Counter[tuple[int, int]] = Counter()
    for recency_days, frequency, customers in pairs:
        cells[cuts.r_score(recency_days), cuts.f_score(frequency)] += customers
    segments: Counter[RfmSegment] = Counter()
    for (r_score, f_score), customers in cells.items():
        segments[rfm_segment(r_score, f_score)] += customers
    return RfmCounts(
        customers=cuts.customers,
        segment_counts={segment: segments[segment] for segment in RfmSegment},
        cell_counts={cell: cells[cell] for cell in product(SCORES, SCORES)},
    )


def score_population(population: Mapping[str, RfmFigures]) -> RfmReport:
    """Quintile scores of every customer of the RFM population, O(N log N) (SPEC.md Customers, RFM)."""
    if any(figures.frequency < 1 for figures in population.values()):
        raise ValueError("the RFM population holds only customers with a completed order in the lookback")
    cuts = rfm_cuts(population.values())
    scores = {person_key: cuts.score(figures) for person_key, figures in population.items()}
    return rfm_report(scores)


def rfm_report(scores: Mapping[str, RfmScore]) -> RfmReport:
    """Counts per segment and per (r_score, f_score) cell of a population's scores."""
    segments = Counter(score.segment for score in scores.values())
    cells = Counter((score.r_score, score.f_score) for score in scores.values())
    return RfmReport(
        scores=dict(scores),
        segment_counts={segment: segments[segment] for segment in RfmSegment},
        cell_counts={cell: cells[cell] for cell in product(SCORES, SCORES)},
    )
