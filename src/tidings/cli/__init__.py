"""The ``tidings`` command: the typer app (``app.py``) and one module per command group.

Importing a command module registers its commands on ``app``; a new group is a new module here
plus one import line below.
"""

from tidings.cli import (
    config,
    deliveries,
    dlq,
    endpoints,
    events,
    migrate,
    process,
    publish,
    replay,
    serve,
    tail,
    triggers,
)
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
    "deliveries",
    "dlq",
    "endpoints",
    "events",
    "fail",
    "main",
    "migrate",
    "process",
    "publish",
    "replay",
    "serve",
    "settings_from",
    "tail",
    "triggers",
    "user_errors",
]
