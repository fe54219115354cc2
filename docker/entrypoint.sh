#!/bin/sh
# lanes-entrypoint: run one Lanes process, chosen by the first argument.
#
#   api                 the HTTP API (python -m backend.serve) on $LANES_API_HOST:$LANES_API_PORT (0.0.0.0:8000)
#   worker [args ...]   a worker; args go to `python -m worker` (queues, --name, --burst, --max-jobs)
#   migrate [args ...]  bring DATABASE_URL to the newest schema, then exit
#   scheduler [args ...] the scheduler daemon; args go to `python -m scheduler` (--name, --burst)
#
# Settings come from the environment (REDIS_URL, DATABASE_URL, LANES_*), read by backend.config.
# `exec` hands PID and signals to the process, so SIGTERM reaches the worker and it finishes its
# current job before it exits (a warm shutdown), and the scheduler ends after its current pass.
set -eu

usage() {
    cat <<'USAGE'
usage: lanes-entrypoint api | worker [queue ...] [--name NAME] [--burst] | migrate [revision] | scheduler [--name NAME]
USAGE
}

command="${1:-api}"
[ "$#" -gt 0 ] && shift

case "$command" in
    api)
        # Inside a container the API must listen beyond loopback unless told otherwise.
        LANES_API_HOST="${LANES_API_HOST:-0.0.0.0}" exec python -m backend.serve
        ;;
    worker)
        exec python -m worker "$@"
        ;;
    migrate)
        exec python -m backend.migrate "$@"
        ;;
    scheduler)
        exec python -m scheduler "$@"
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        echo "lanes: unknown command: $command" >&2
        usage >&2
        exit 64
        ;;
esac
