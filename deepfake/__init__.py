"""deepfake: a ResNet50 deepfake image detector, tracked in MLflow and tuned with Optuna."""

__version__ = "0.1.0"

CLASS_NAMES_DEFAULT = ("real", "fake")
