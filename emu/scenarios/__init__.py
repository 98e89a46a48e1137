"""The built-in scenarios; importing this package registers them by name."""

from . import engine_demos, svm  # noqa: F401
