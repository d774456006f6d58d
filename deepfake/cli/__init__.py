"""Command line: ``deepfake --help``. Each module below adds its commands to :data:`main`."""

from deepfake.cli.app import main
from deepfake.cli import train_cmds  # noqa: F401  (registers demo-data, train, sample)

__all__ = ["main"]
from deepfake.cli import tune_cmds  # noqa: F401,E402  (registers tune, suite, register, promote, evaluate)
from deepfake.cli import predict_cmds  # noqa: F401,E402  (registers predict, explain)
