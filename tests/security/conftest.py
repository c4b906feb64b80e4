"""Fixtures shared with the parts under review: the local SMTP server of the action tests."""

from tests.triggers.jobs.test_actions import smtp  # noqa: F401
