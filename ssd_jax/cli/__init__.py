"""The command-line tools (``ssd-jax-train``, ``-eval``, ``-predict``, ``-export``,
``-benchmark``, ``-import``), one module each, sharing ``common``'s conventions: kebab-case
flags with help text, ``--config FILE_OR_NAME`` plus ``--config.key=value`` overrides, one-line
errors (exit status 2) for user mistakes, ``--verbose`` for details and tracebacks."""
