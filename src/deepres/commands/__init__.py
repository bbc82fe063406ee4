"""The command line: one module per `deepres` subcommand (deepres.cli lists them), each with `add_arguments(parser)`
and `run(args) -> int`. This is the only package with argparse and the only one that prints tables and lines for a
user; the library packages below it return values. `options.py` holds the options several commands share."""
