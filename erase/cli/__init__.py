"""The `erase` command line: one module per subcommand, dispatched by `erase.cli.main.main`."""
