"""``python -m equi_ext TOOL [ARGS]``: the ``equi-ext`` command (``equi_ext.cli``)."""

from .cli import main

main()
