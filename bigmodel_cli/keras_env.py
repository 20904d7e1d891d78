"""The single entry point to Keras: quiet logs, the TensorFlow backend, seeding."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """TensorFlow's C++ start-up lines ('Could not find cuda drivers', oneDNN) ignore TF_CPP_MIN_LOG_LEVEL in
    TF 2.21; they are written to file descriptor 2 before absl is initialised, so hide that descriptor."""
    if "tensorflow" in sys.modules or os.environ.get("BIGMODEL_TF_LOGS"):
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras(seed: int | None = None) -> Any:
    """Import Keras on TensorFlow with TF's logs silenced; seed everything if `seed` is given. (Typed Any: the
    callers subclass its layers and callbacks, which a ModuleType would hide from mypy.)"""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with _native_stderr_silenced():
        import absl.logging
        import keras
        import tensorflow as tf

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    if seed is not None:
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    return keras


def tensorflow() -> Any:
    """TensorFlow, imported through `import_keras` (logs silenced first)."""
    import_keras()
    import tensorflow as tf

    return tf
