"""`python -m meshstress.cli` is the `meshstress` command."""

from meshstress.cli import main

main()
