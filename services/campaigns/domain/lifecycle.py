"""Campaign statuses and the actions between them (SPEC.md "Campaigns", Lifecycle)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"


class Action(StrEnum):
    ACTIVATE = "activate"
    PAUSE = "pause"
    RESUME = "resume"
    COMPLETE = "complete"


DRAFT, ACTIVE, PAUSED, COMPLETED = Status.DRAFT, Status.ACTIVE, Status.PAUSED, Status.COMPLETED
STATUSES = tuple(Status)
ACTIONS = tuple(Action)

# draft -> active (activate) <-> paused -> completed (at end_at, or by a call). `activate` on a paused
# campaign resumes it, because the API has one activate route for both; completed is final.
_TRANSITIONS: dict[tuple[str, str], Status] = {
    (DRAFT, Action.ACTIVATE): ACTIVE,
    (PAUSED, Action.ACTIVATE): ACTIVE,
    (PAUSED, Action.RESUME): ACTIVE,
    (ACTIVE, Action.PAUSE): PAUSED,
    (ACTIVE, Action.COMPLETE): COMPLETED,
    (PAUSED, Action.COMPLETE): COMPLETED,
}


class InvalidTransition(ValueError):
    """An action the campaign's status does not allow (the API answers 409 with this reason)."""

    def __init__(self, status: str, action: str) -> None:
        super().__init__(f"a {status} campaign cannot {action}")
        self.status = status
        self.action = action


def transition(status: str, action: str) -> Status:
    """The status after `action`, or InvalidTransition (SPEC.md Lifecycle: draft -> active <-> paused -> completed)."""
    try:
        return _TRANSITIONS[(Status(status), Action(action))]
    except (KeyError, ValueError):
        raise InvalidTransition(status, action) from None


def allowed_actions(status: str) -> list[Action]:
    """The actions a campaign in `status` accepts, in declaration order."""
    return [action for action in ACTIONS if (status, action) in _TRANSITIONS]


def editable(status: str) -> bool:
    """Only a draft's audience, variants and offer can be changed (SPEC.md Lifecycle)."""
    return status == DRAFT


def assigning(status: str) -> bool:
    """Only an active campaign assigns: a paused one assigns nobody, a draft or completed one neither (SPEC.md)."""
    return status == ACTIVE
