"""Errors a user can cause and fix."""


class UserError(Exception):
    """A mistake the user can fix; the message is one line naming the file/field and the fix."""
