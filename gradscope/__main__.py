"""``python -m gradscope``: the same command line as the ``gradscope`` script."""

from .cli import main

main()
