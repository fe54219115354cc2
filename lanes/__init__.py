"""Lanes for its users: the Python client (`lanes.client`) and the `lanes` command (`lanes.cli`)."""
