"""`python -m upgrader`."""

from upgrader.cli import main

main()
