"""Errors a user can cause and fix: the CLI prints their message as one line and exits with 2."""


class UserInputError(ValueError):
    """Bad input from the user (a flag, a file, a field): the message names it and what is expected."""
