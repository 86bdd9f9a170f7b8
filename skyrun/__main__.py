"""`python -m skyrun`: see skyrun/cli.py."""

from skyrun.cli import main

main()
