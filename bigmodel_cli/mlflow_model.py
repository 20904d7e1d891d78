"""A run as an MLflow pyfunc model (`export --register`): `mlflow.pyfunc.load_model(URI).predict(df)` takes raw
columns and answers as `bigmodel predict` does (the class probabilities and label, or the value), run as predict
runs it: the run's checked ONNX graph in onnxruntime where it has one, else Keras (safe_mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd


class RunModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """The logged model's artifact "run" holds the run folder's model, graph, schema, config and manifest."""

    def load_context(self, context: Any) -> None:
        from .folders import load_run

        self.run = load_run(Path(context.artifacts["run"]), portable=True)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from .predict import frame

        return frame(self.run, model_input, self.run.predict_rows(model_input, "the model input"))
