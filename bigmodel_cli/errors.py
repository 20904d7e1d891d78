"""The user-error exception types. Anything else raised is a bug (exit 3)."""

import re


def one_line(e: BaseException, limit: int = 300) -> str:
    """A library's exception as one line for our message: its first line, without TensorFlow's op prefix and
    suffix, at most `limit` characters (its type where it says nothing)."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(e)).strip()
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text.splitlines()[0] if text else "")
    text = " ".join(text.split())
    return (text[:limit] + "...") if len(text) > limit else text or type(e).__name__


class BigModelError(Exception):
    """A problem the user can fix: bad input, bad config, bad usage. Exit code 2."""

    exit_code = 2


class ConfigError(BigModelError):
    """The YAML config or a --set override is invalid."""


class DataError(BigModelError):
    """A data file, a column or a prep/run folder is unusable."""


class GateFailed(Exception):
    """A quality gate failed (exit code 1). Not a user error: the result is still printed."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs; exit code 143."""

    exit_code = 143
