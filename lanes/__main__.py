"""`python -m lanes`: the `lanes` command."""

from lanes.cli import main

main()
