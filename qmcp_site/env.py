"""Reading settings from the environment, for the settings module and for what runs before
Django is set up (the production server's process)."""

import os


def env_bool(name: str, default: bool = False) -> bool:
    """``1``, ``true``, ``yes`` or ``on`` (any case) is True, anything else False; unset or
    empty is ``default``."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}
