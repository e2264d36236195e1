"""`python -m cvmstore` runs the command line."""

from cvmstore.cli.main import entry_point

entry_point()
