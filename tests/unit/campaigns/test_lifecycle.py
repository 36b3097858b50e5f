import itertools

import pytest

from services.campaigns.domain.lifecycle import (
    ACTIONS,
    STATUSES,
    InvalidTransition,
    allowed_actions,
    assigning,
    editable,
    transition,
)

# SPEC.md Lifecycle: draft -> active (activate) <-> paused -> completed (at end_at, or by a call).
ALLOWED = {
    ("draft", "activate"): "active",
    ("active", "pause"): "paused",
    ("paused", "activate"): "active",
    ("paused", "resume"): "active",
    ("active", "complete"): "completed",
    ("paused", "complete"): "completed",
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(STATUSES, ACTIONS)))
def test_every_status_and_action_pair_follows_the_spec_diagram(status, action):
    if (status, action) in ALLOWED:
        assert transition(status, action) == ALLOWED[(status, action)]
    else:
        with pytest.raises(InvalidTransition, match=f"a {status} campaign cannot {action}"):
            transition(status, action)


def test_a_completed_campaign_accepts_no_action():
    assert allowed_actions("completed") == []


@pytest.mark.parametrize(("status", "action"), [("deleted", "activate"), ("draft", "launch")])
def test_unknown_statuses_and_actions_are_invalid_transitions(status, action):
    with pytest.raises(InvalidTransition):
        transition(status, action)


@pytest.mark.parametrize("status", STATUSES)
def test_only_a_draft_is_editable_and_only_an_active_campaign_assigns(status):
    assert editable(status) is (status == "draft")
    assert assigning(status) is (status == "active")
