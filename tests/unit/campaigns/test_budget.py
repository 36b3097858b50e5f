from decimal import Decimal

from services.campaigns.domain.budget import budget_reached, spent


def test_spend_is_delivered_touches_times_cost_plus_discount_cost():
    assert spent(120, Decimal("0.05"), Decimal("37.50")) == Decimal("43.50")


def test_the_budget_is_reached_at_exactly_its_amount():
    assert not budget_reached(Decimal("99.99"), Decimal("100.00"))
    assert budget_reached(Decimal("100.00"), Decimal("100.00"))
    assert budget_reached(Decimal("100.01"), Decimal("100.00"))


def test_without_a_budget_nothing_is_reached():
    assert not budget_reached(Decimal("1000000000"), None)


def test_spend_in_integer_cents_reaches_the_budget_in_cents_alike():
    assert spent(120, 5, 3750) == 4350
    assert budget_reached(spent(120, 5, 3750), 4350)
    assert not budget_reached(spent(120, 5, 3749), 4350)
