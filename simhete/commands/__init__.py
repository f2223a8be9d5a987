"""CLI subcommands: one module each, defining HELP, add_arguments(parser) and run(args) -> int.

A module is listed in simhete.cli.COMMANDS; the subcommand name is the module name with '_' → '-'.
"""
