"""The built-in scenarios; importing this package registers them by name."""

from . import engine_demos  # noqa: F401
