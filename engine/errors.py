"""The one exception type users see.

Every error a user can cause (bad input, missing files, wrong shapes, an
unavailable backend) is raised as :class:`VidrtError` with a message that names
the problem and the fix. The CLI prints it on one line and exits non-zero;
anything else escaping is a bug in vidrt.
"""


class VidrtError(Exception):
    """A user-facing error whose message says what was wrong and how to fix it."""
