"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
    """Bad input from the user (config value, path, data file).

    `run.py` prints ``error: <message>`` and exits with status 2, with no traceback.
    Messages name the bad value and what is allowed.
    """
