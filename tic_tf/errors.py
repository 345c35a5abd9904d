"""The error type for bad input: the command-line tools print its message and exit non-zero."""


class UserError(ValueError):
    """Input a user can fix; the message names the problem and the fix. A ValueError, so
    that callers catch bad arguments as they would from any Python library."""


class DataUnavailable(UserError):
    """A data set that cannot be loaded here; `reason` says why in a few words, for callers
    that name their own ways of providing it."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason
