"""`python -m meshstress` is the `meshstress` command."""

from meshstress.cli import main

main()
