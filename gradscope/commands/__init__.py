"""One package per command (``gradscope.commands.check``): its options, its computation,
its report and its renderers side by side."""
