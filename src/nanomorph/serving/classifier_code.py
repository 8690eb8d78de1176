"""MLflow "model from code" entry of the classifier: `mlflow.pyfunc.log_model(python_model=<this file>)`."""

import mlflow

from nanomorph.serving.models import NanowireClassifier

mlflow.models.set_model(NanowireClassifier())
