"""The commands of the threadguard command line, one module each.

Each module has the same small interface: `add_arguments(parser)` fills
in its own subparser (options, description, epilog) and `run(args,
parser)` carries it out and returns the exit status.  They are listed,
with their one-line help, in threadguard._cli.COMMANDS; a command's
module is imported only when the command line names it.  Values the
native library parses (the THREADGUARD_* settings) are checked by the
library (threadguard._settings.check_setting), never here.
"""
