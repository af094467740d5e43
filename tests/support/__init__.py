"""Helpers shared by Switchyard's integration tests (stdlib only)."""
