"""One exception type for problems the user can fix; the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""
