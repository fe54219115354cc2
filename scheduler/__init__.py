"""The Lanes scheduler daemon: rq-scheduler's loop firing cron schedules, plus housekeeping."""
