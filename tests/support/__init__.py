"""Helpers shared by the test suites (servers on loopback, fixtures' building blocks)."""
