"""One exception type for input the user can fix; the CLI prints it as a single line."""


class AlignError(Exception):
    """Bad input: the message names the file, field or record and how to fix it."""
