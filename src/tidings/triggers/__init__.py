"""Triggers: conditions on events that start actions (see docs/triggers.md).

The modules are imported by name (``tidings.triggers.conditions``, ``.definitions``,
``.index``, ...); this package file stays empty so importing one part never pulls in the
others (the job queue and the processor need the store, the conditions do not).
"""
