"""The one way user mistakes surface: a one-line message and exit code 2."""


class LexloraError(Exception):
    """A user-facing error (bad input, missing file, invalid recipe).

    The CLI prints ``error: <message>`` on one line and exits with code 2; no traceback.
    Messages name the file, field or value at fault and what was expected.
    """

    exit_code = 2
