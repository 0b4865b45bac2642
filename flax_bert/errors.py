"""Errors a user can cause (bad input, bad config): the CLI prints them as one line."""


class UserError(Exception):
    """A one-line message naming the file or field at fault and the fix."""
