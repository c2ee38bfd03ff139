"""Command-line interface: ``mixerlab <command>`` (also ``python -m mixerlab``).

Each command lives in its own module ``mixerlab/cli/<command>_cmd.py`` that defines
``add_parser(subparsers)`` and ``run(args) -> int``. Library code never imports from here.
"""
