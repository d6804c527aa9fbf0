"""Errors that the person running the code can fix. Library code raises them as ordinary exceptions; only
the scripts turn them into a one-line message and exit status 1 (``chatglm.entrypoints.cli.run_script``)."""


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is a single line that says what to do."""


class ModelLoadError(UserError):
    """The model or tokenizer cannot be loaded as asked (missing folder, hub id not downloaded, no GPU, ...)."""
