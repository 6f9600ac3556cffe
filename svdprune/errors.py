"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
    """Bad input from the user (config value, path, data file).

    `run.py` prints ``error: <message>`` and exits with status 2, with no traceback.
    Messages name the bad value and what is allowed.
    """


def check_int(name: str, value, low: int, high: int | None = None, what: str = "") -> int:
    """``value`` must be an int in [low, high] (bool excluded); otherwise a one-line UserError naming it."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        allowed = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
        raise UserError(f"{name}={value!r}; allowed: {allowed}{what}")
    return value
