"""`python -m bigmodel_cli` = `bigmodel`."""

from .cli import main

main()
