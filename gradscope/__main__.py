"""``python -m gradscope``: the same command line as the ``gradscope`` script."""

from ._entry import main

main()
