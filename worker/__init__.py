"""The Lanes worker: an RQ worker that mirrors every job's life into SQL."""
