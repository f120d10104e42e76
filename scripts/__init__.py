"""The `erase` command line: one module per subcommand, dispatched by `scripts.cli.main`."""
