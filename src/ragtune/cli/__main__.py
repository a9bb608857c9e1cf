"""`python -m ragtune.cli`."""

from ragtune.cli import main

main()
