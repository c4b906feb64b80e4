"""Triggers: conditions on events start actions through a job queue, with recorded results."""
