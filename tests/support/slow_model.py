"""A deliberately slow model, logged with MLflow's models-from-code (no pickle): it wraps a saved
scikit-learn model (artifact ``inner``) and sleeps ``delay_s`` (model config) before every predict.

The rollout tests register it as the challenger to breach the serving-latency budget for real.
"""

import time

import mlflow
from mlflow.models import set_model


class SlowModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.inner = mlflow.sklearn.load_model(context.artifacts["inner"])
        self.delay_s = float(context.model_config.get("delay_s", 0.25))

    def predict(self, context, model_input, params=None):
        time.sleep(self.delay_s)
        return self.inner.predict(model_input)


set_model(SlowModel())
