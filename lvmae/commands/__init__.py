"""One module per ``lvmae`` subcommand: HELP, DESCRIPTION, add_arguments(parser), run(args)."""
