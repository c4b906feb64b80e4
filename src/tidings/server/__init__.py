"""`tidings serve`: the HTTP API, the service that wires store, queue and workers, metrics."""
