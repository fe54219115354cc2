"""Lanes: a task platform on Redis and RQ, with every job's life mirrored in SQL."""

__version__ = "0.1.0"
