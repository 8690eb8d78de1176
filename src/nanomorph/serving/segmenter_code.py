"""MLflow "model from code" entry of the segmenter: `mlflow.pyfunc.log_model(python_model=<this file>)`."""

import mlflow

from nanomorph.serving.models import NanowireSegmenter

mlflow.models.set_model(NanowireSegmenter())
