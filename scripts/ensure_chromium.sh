#!/usr/bin/env sh
# The dashboard's browser tests drive Debian's `chromium` with Playwright. Install it where this
# machine lets us (root with apt-get); elsewhere say so: the tests then skip, except under CI=true.
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the dashboard tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && exit 0
fi
echo "chromium is not installed and cannot be installed here: the dashboard browser tests will skip" >&2
exit 0
