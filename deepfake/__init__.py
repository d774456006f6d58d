"""deepfake: a deepfake image detector on pretrained backbones, tracked in MLflow and tuned with Optuna."""

__version__ = "0.1.0"
