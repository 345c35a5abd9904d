"""The error type for bad input: the command-line tools print its message and exit non-zero."""


class UserError(Exception):
    """Input a user can fix; the message names the problem and the fix."""
