"""The error of a command-line value that is only found bad once the command runs."""


class UsageError(ValueError):
    """A bad value of a command-line flag (the message names the flag and what is expected): the command
    line prints it as one line and exits with status 2, as for a value argparse rejects."""
