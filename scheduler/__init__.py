"""The Lanes scheduler daemon (cron schedules through rq-scheduler): arrives with the schedules issue."""
