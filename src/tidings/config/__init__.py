"""Settings from a YAML file plus ``TIDINGS_*`` environment variables; see docs/config.md.

Ground floor: this package imports nothing of tidings but the ground-floor ``headers``,
``retry``, ``topics`` and ``urls``, so the bus, stores, webhooks, server and CLI can all read
settings without import cycles (``tidings.webhooks.endpoint.from_settings`` turns ``events``
into endpoints). Every user mistake becomes one ``ConfigError`` whose message names the file
(or environment variable), the key path and what was expected, so ``tidings config check`` can
print it without a traceback.

One module per role: ``loading`` (``load``: YAML, interpolation, environment, seed 002 keys,
error wording), ``durations``, ``errors``, and one per part of the settings with its checks:
``bus`` (``bus`` and ``event_broker``), ``webhooks`` (``events``), ``server`` (``store`` and
``server``), ``triggers`` (``triggers`` and ``processor``); ``settings`` holds the whole.
"""

from tidings.config.bus import (
    BusKwargs,
    BusSettings,
    DatabaseBrokerSettings,
    EventBrokerSettings,
    NatsBrokerSettings,
    RedisBrokerSettings,
    RetrySettings,
)
from tidings.config.durations import Duration, parse_duration
from tidings.config.errors import ConfigError
from tidings.config.loading import CONFIG_ENV, ENV_PREFIX, load
from tidings.config.server import (
    LEASE_RULE,
    SCOPES,
    ApiKeySettings,
    ServerSettings,
    StoreSettings,
    fits_lease,
)
from tidings.config.settings import Settings
from tidings.config.triggers import ProcessorSettings, TriggerDefinition
from tidings.config.webhooks import (
    AuthSettings,
    EndpointSettings,
    PayloadFormat,
    WebhookSettings,
    endpoint_id_for_url,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "LEASE_RULE",
    "SCOPES",
    "ApiKeySettings",
    "AuthSettings",
    "BusKwargs",
    "BusSettings",
    "ConfigError",
    "DatabaseBrokerSettings",
    "Duration",
    "EndpointSettings",
    "EventBrokerSettings",
    "NatsBrokerSettings",
    "PayloadFormat",
    "ProcessorSettings",
    "RedisBrokerSettings",
    "RetrySettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "TriggerDefinition",
    "WebhookSettings",
    "endpoint_id_for_url",
    "fits_lease",
    "load",
    "parse_duration",
]
