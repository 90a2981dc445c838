"""User-facing error type: a message that says what was wrong and what to do."""


class AlphaLoRAError(Exception):
    """An error caused by the user's input or environment, with an actionable message.

    The CLI prints it without a traceback and the app shows it as an error box.
    """
