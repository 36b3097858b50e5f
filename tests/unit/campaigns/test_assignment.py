import hashlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.campaigns.domain.assignment import (
    HOLDOUT,
    Variant,
    arm_of,
    arms,
    bucket,
    in_global_holdout,
    validate_splits,
)

# Identifiers as SPEC.md allows them (1..256 characters, no control characters), Chinese and emoji included.
identifiers = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=256
) | st.text(alphabet="张伟李娜王芳刘洋陈静客户会员订单优惠券" + string.ascii_letters, min_size=1, max_size=40)


def spec_bucket(text: str) -> int:
    """SPEC.md Assignment read literally: SHA-256 of the UTF-8 text, first 8 bytes big-endian, modulo 10,000."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % 10_000


@st.composite
def split_plans(draw):
    """A holdout and 1..5 variants whose splits sum with it to 10,000 (zero splits allowed, one variant above 0)."""
    count = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.integers(0, 10_000), min_size=count, max_size=count)))
    edges = [0, *cuts, 10_000]
    widths = [edges[i + 1] - edges[i] for i in range(len(edges) - 1)]
    holdout_bp, splits = widths[0], widths[1:]
    if all(split == 0 for split in splits):
        splits[-1], holdout_bp = holdout_bp, 0
        if splits[-1] == 0:
            splits[-1] = 10_000
    variants = [Variant(f"v{index}", split) for index, split in enumerate(splits)]
    return holdout_bp, variants


@given(identifiers, identifiers)
def test_bucket_is_the_spec_hash_of_campaign_and_person(campaign_id, person_key):
    assert bucket(campaign_id, person_key) == spec_bucket(f"{campaign_id}:{person_key}")


def test_bucket_of_a_chinese_person_key_hashes_its_utf8_bytes():
    expected = int.from_bytes(hashlib.sha256("春节促销:张伟".encode()).digest()[:8], "big") % 10_000

    assert bucket("春节促销", "张伟") == expected


@given(identifiers, identifiers, split_plans())
def test_an_arm_is_the_range_of_its_bucket_holdout_first_then_variants_in_order(campaign_id, person_key, plan):
    holdout_bp, variants = plan
    position = spec_bucket(f"{campaign_id}:{person_key}")
    # Recompute the ranges independently: [start, end) per arm, holdout first.
    ranges = [(HOLDOUT, 0, holdout_bp)]
    start = holdout_bp
    for variant in variants:
        ranges.append((variant.name, start, start + variant.split_bp))
        start += variant.split_bp
    expected = next(name for name, low, high in ranges if low <= position < high)

    assert arm_of(campaign_id, person_key, holdout_bp, variants) == expected


def test_the_first_and_last_bucket_of_each_range_fall_in_that_arm():
    holdout_bp, variants = 1000, [Variant("a", 4500), Variant("b", 0), Variant("c", 4500)]
    # Find persons landing on the edge buckets 0, 999, 1000, 5499, 5500 and 9999 by search.
    wanted = {0: HOLDOUT, 999: HOLDOUT, 1000: "a", 5499: "a", 5500: "c", 9999: "c"}
    found: dict[int, str] = {}
    number = 0
    while len(found) < len(wanted):
        person = f"p{number}"
        position = spec_bucket(f"edge:{person}")
        if position in wanted and position not in found:
            found[position] = person
        number += 1

    assert {position: arm_of("edge", person, holdout_bp, variants) for position, person in found.items()} == wanted


@given(identifiers, st.integers(0, 10_000))
def test_the_global_holdout_takes_the_buckets_of_global_and_the_person(person_key, holdout_bp):
    assert in_global_holdout(person_key, holdout_bp) is (spec_bucket(f"global:{person_key}") < holdout_bp)


@given(identifiers)
def test_a_zero_global_holdout_keeps_nobody_out_and_a_full_one_everybody(person_key):
    assert not in_global_holdout(person_key, 0)
    assert in_global_holdout(person_key, 10_000)


def test_the_holdout_share_is_close_to_its_split_over_many_persons():
    persons = [f"customer-{number}" for number in range(20_000)]

    held = sum(arm_of("share", person, 2000, [Variant("a", 8000)]) == HOLDOUT for person in persons)

    assert abs(held / len(persons) - 0.2) < 0.01


def test_arms_list_the_holdout_first_only_when_it_has_buckets():
    variants = [Variant("a", 5000), Variant("b", 5000)]

    assert arms(0, variants) == [("a", 5000), ("b", 5000)]
    assert arms(1000, [Variant("a", 9000)]) == [(HOLDOUT, 1000), ("a", 9000)]


@given(split_plans())
def test_generated_split_plans_are_valid(plan):
    validate_splits(*plan)


@pytest.mark.parametrize(
    ("holdout_bp", "variants", "reason"),
    [
        (1000, [Variant("a", 8000)], "sum to 10000, not 9000"),
        (0, [Variant("a", 6000), Variant("b", 6000)], "sum to 10000, not 12000"),
        (-1, [Variant("a", 10_001)], "holdout_bp"),
        (10_001, [Variant("a", 0)], "holdout_bp"),
        (0, [], "at least one variant"),
        (0, [Variant("a", 5000), Variant("a", 5000)], "listed twice"),
        (5000, [Variant(HOLDOUT, 5000)], "holdout"),
        (0, [Variant("", 10_000)], "variants[0].name"),
        (0, [Variant("a\nb", 10_000)], "control characters"),
        (0, [Variant("a", -1), Variant("b", 10_001)], "variants[0].split_bp"),
        (10_000, [Variant("a", 0)], "above 0"),
        (0, [Variant("a", 10_000, message="x" * 4001)], "message"),
        (0, [Variant(f"v{n}", 500) for n in range(20)] + [Variant("extra", 0)], "at most 20"),
    ],
)
def test_refuses_splits_that_do_not_cover_the_buckets_once(holdout_bp, variants, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        validate_splits(holdout_bp, variants)
