"""Contract suites every backend must pass; subclass them with your backend's fixtures."""
