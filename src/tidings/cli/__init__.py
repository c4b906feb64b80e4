"""The ``tidings`` command: the typer app (``app.py``) and one module per command group.

Importing a command module registers its commands on ``app``; a new group is a new module here
plus one import line below.
"""

from tidings.cli import config, dlq, migrate, process, replay, serve, triggers
from tidings.cli.app import (
    EXIT_USER_ERROR,
    USER_ERRORS,
    app,
    fail,
    main,
    settings_from,
    user_errors,
)

__all__ = [
    "EXIT_USER_ERROR",
    "USER_ERRORS",
    "app",
    "config",
    "dlq",
    "fail",
    "main",
    "migrate",
    "process",
    "replay",
    "serve",
    "settings_from",
    "triggers",
    "user_errors",
]
