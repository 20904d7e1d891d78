"""bigmodel: from a table of data to a trained, evaluated, exported Keras model."""

__version__ = "0.1.0"
