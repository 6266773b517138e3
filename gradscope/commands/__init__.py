"""One package per command: options, ``run``, report types and renderers."""
