"""The one exception type whose message is meant for the person at the keyboard."""


class WorkbenchError(Exception):
    """A problem the user can fix; the message says what and how. Entry points print it without a trace."""


class PromotionRefused(WorkbenchError):
    """The gates turned the candidate down: a decision, not a fault, yet the stage must fail so nothing ships it."""
