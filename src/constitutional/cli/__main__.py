"""`python -m constitutional.cli`."""

from constitutional.cli import main

main()
