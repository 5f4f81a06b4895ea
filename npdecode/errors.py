"""The one exception type for user mistakes (bad files, unknown names, missing models).

The CLI prints ``str(err)`` as a single line and exits with status 2, never a traceback.
Messages name the file (and line) at fault and say what to do.
"""


class NpdecodeError(Exception):
    """A user-facing error: one line that names the culprit and the fix."""
