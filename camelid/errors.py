"""The one exception type for problems a user can cause and fix."""


class CamelidError(Exception):
    """A user-facing error: the message names the problem and what to do about it.

    The CLI prints it without a traceback and exits non-zero; the server answers with an
    OpenAI-shaped error. Anything else that escapes is a bug in camelid.
    """
