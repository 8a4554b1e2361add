"""The one exception type for bad user input: the CLI prints its message as a single line, no traceback."""


class UserError(Exception):
  """Bad input from the user (a path, a name, a config); the message says what and where."""
