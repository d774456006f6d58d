"""Configuration: plain dataclasses, YAML files and ``section.key=value`` overrides.

Resolution order (later wins): dataclass defaults, then each YAML file in turn, then
command-line overrides. The resolved configuration is saved with every run.

The shipped configurations and search spaces live in the repository's top-level ``experiments/``
(``configs/*.yaml``, ``search_space*.yaml``), which the build maps into the package as
``deepfake.experiments``; they are found by name wherever the command runs (:func:`find_file`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from deepfake import backbones
from deepfake.errors import DeepfakeError


@dataclass
class AugmentConfig:
    """Training-time augmentation (applied to the training split only)."""

    flip: bool = True  # random horizontal flips
    blur_prob: float = 0.0  # probability of a Gaussian blur (CNNDetection-style)
    blur_sigma_max: float = 3.0  # blur sigma drawn uniformly from [0, blur_sigma_max]
    jpeg_prob: float = 0.0  # probability of JPEG re-compression
    jpeg_quality_min: int = 30  # JPEG quality drawn uniformly from [min, 100]


@dataclass
class SyntheticConfig:
    """Self-made training fakes (deepfake/synthetic.py), made on the fly from the training split's real images.

    Each real training image gives its real sample and, with probability ``fraction``, a fake of the same
    content (label 1), new every epoch and seeded: so a training split may hold real images only.
    """

    kind: str = "none"  # none | sbi (self-blended images) | resynth (down/upsampled) | both (either, per fake)
    fraction: float = 0.5  # probability that a real training image also gives a synthetic fake in an epoch
    # sbi masks from: mesh (the 468-point face mesh; per image MTCNN's keypoints where no mesh is found, then an
    # ellipse) | keypoints (MTCNN's five, then an ellipse) | ellipse. Points are found once per image, cached.
    mask: str = "mesh"


SYNTHETIC_MASKS = ("mesh", "keypoints", "ellipse")  # data.synthetic_fakes.mask, best first


@dataclass
class FaceConfig:
    """Face crops (off by default): find faces, crop each square with a margin, give the crop to the model.

    Stored with a trained model, so inference crops exactly as training did.
    """

    enabled: bool = False  # --faces
    detector: str = "mtcnn"  # MTCNN (weights ship in its PyPI wheel; nothing is downloaded)
    mode: str = "largest"  # largest | all (every face becomes its own sample)
    margin: float = 0.3  # added on every side, as a fraction of the face box's longer side
    min_confidence: float = 0.9  # detections below this are ignored
    min_size: int = 20  # faces whose box is smaller than this many pixels (longer side, original image) are ignored
    detect_max_side: int = 640  # larger images are downscaled for detection only; crops come from full resolution


@dataclass
class VideoConfig:
    """Videos (mp4, mov, avi, webm, mkv) among the images: frames sampled uniformly, scores aggregated per video."""

    frames: int = 8  # frames sampled uniformly from each video
    aggregate: str = "mean"  # mean | max | topk (mean of the top_k frame probabilities): the video's probability
    top_k: int = 3  # for aggregate: topk
    max_seconds: float = 600.0  # a longer (or endless) stream is sampled within its first max_seconds
    max_frames: int = 18000  # and within its first max_frames frames
    max_bytes: int = 100_000_000  # a served video larger than this is refused


@dataclass
class DataConfig:
    path: str | None = None  # dataset root: split (train/val/test) or unsplit (class folders)
    # Further datasets trained on together with ``path`` (``--data A --data B``): each split as it would be alone,
    # their splits joined; the model sees every kind of fake they hold (deepfake/mixing.py).
    extra_paths: list[str] = field(default_factory=list)
    # Each dataset's share of every training epoch, in the order [path, *extra_paths] (``--mix 2,1``); empty: equal
    # shares, so a small dataset is not drowned by a large one. An epoch holds as many images as the training splits
    # together; a dataset whose share asks for more images than it has repeats some (and leaves some out otherwise).
    mix: list[float] = field(default_factory=list)
    class_names: list[str] = field(default_factory=lambda: ["real", "fake"])  # index = label
    val_fraction: float = 0.15  # for unsplit datasets
    test_fraction: float = 0.15  # for unsplit datasets
    image_size: int = 0  # square side the images are resized to; 0 = the backbone's native size
    batch_size: int = 32
    num_parallel_calls: int = -1  # tf.data parallelism; -1 = AUTOTUNE
    cache: str = "auto"  # decoded-image cache: auto | memory | disk | none
    # resize: every image resized to image_size; crop: image_size crops at the image's own resolution (random in
    # training, the mean over a grid of up to test_crops x test_crops crops at evaluation and inference)
    fit: str = "resize"
    test_crops: int = 3  # fit: crop: at most this many crops per side at evaluation and inference
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic_fakes: SyntheticConfig = field(default_factory=SyntheticConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    media_cache_dir: str = ".cache/media"  # face crops and video frames, decoded once per file and settings
    class_weights: bool = True  # weight the loss by inverse class frequency
    leakage_check: bool = True  # find exact/near-duplicate images across splits before training
    audit: bool = True  # compare classes on format, size, JPEG quality, EXIF before training
    audit_threshold: float = 0.8  # one-feature ROC-AUC at which a property counts as a shortcut
    content_check: bool = True  # audit: do blurred 32 px images (content alone) separate the classes?
    content_check_images: int = 300  # images per class the content check samples (seeded, from all splits)
    near_duplicate_distance: int = 4  # perceptual-hash Hamming distance counted as a near duplicate
    dedupe: bool = False  # remove duplicates from the later split (val/test)

    def dataset_paths(self) -> list[str]:
        """Every dataset trained on, in ``--data`` order: ``path`` then ``extra_paths``."""
        return [p for p in (self.path, *self.extra_paths) if p]


@dataclass
class ModelConfig:
    # resnet50 | efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2 | efficientnet_b0
    backbone: str = backbones.DEFAULT
    weights: str = "auto"  # auto | imagenet | none | path to a weights file
    pooling: str = "avg"  # avg | max | multi (the average of every stage's output, concatenated: texture too)
    head_units: list[int] = field(default_factory=lambda: [256])  # hidden dense layers
    dropout: float = 0.3
    representation: str = "rgb"  # rgb | npr (neighbouring-pixel residual) | highpass (image minus its blur)


@dataclass
class TrainConfig:
    epochs: int = 5  # phase 1: head on the frozen backbone
    learning_rate: float = 1e-3
    fine_tune_epochs: int = 5  # phase 2: top of the backbone unfrozen
    fine_tune_learning_rate: float = 1e-5
    fine_tune_stages: int = 1  # top backbone stages unfrozen in phase 2 (0 = none; ResNet50: 1-5, EfficientNet: 1-8)
    patience: int = 3  # EarlyStopping patience (epochs), monitored on val_auc
    monitor: str = "val_auc"
    seed: int = 42
    output_dir: str = "outputs"  # checkpoints, figures and reports go below here
    feature_cache: bool = True  # phase 1 trains the head from cached backbone features
    feature_cache_dir: str = ".cache/features"
    mixed_precision: str = "auto"  # auto (per device: precision.choose_precision) | off | bfloat16 | float16
    jit_compile: str = "auto"  # auto | on | off
    calibrate: bool = True  # fit a temperature on validation; stored with the model, applied by inference
    # Phase-2 speed options (benchmarks/results/fine_tune_speed.md); the defaults train as before.
    fine_tune_schedule: str = "constant"  # phase-2 learning rate: constant | cosine (warm-up, then cosine decay to 0)
    fine_tune_lr_warmup_epochs: int = 1  # cosine: phase-2 epochs of linear warm-up to fine_tune_learning_rate
    fine_tune_warmup_stages: int = 0  # staged unfreezing: the first fine_tune_warmup_epochs of phase 2 train ...
    fine_tune_warmup_epochs: int = 0  # ... only these top stages, then all fine_tune_stages (0: no staging)
    fine_tune_depthwise: bool = True  # false: depthwise kernels stay frozen in phase 2 (EfficientNet; faster on CPU)
    validation_freq: int = 1  # phase 2 validates every k-th epoch (and its last); patience counts validations
    # Keras backend: auto ($KERAS_BACKEND, else tensorflow) | tensorflow | jax | torch (deepfake/backend.py); set
    # before Keras is imported, so it is read from the config files and the command line, not from a search space
    backend: str = "auto"


@dataclass
class TrackingConfig:
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "deepfake"
    run_name: str | None = None
    registered_model: str = "deepfake-detector"
    log_model: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"data.image_size": 224, "data.augment.flip": True, ...}`` for MLflow params."""
        return flatten(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 3}`` -> ``{"train": {"epochs": 3}}`` (the inverse of :func:`flatten`)."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field's type, or raise DeepfakeError."""
    origin = get_origin(typ)
    args = get_args(typ)
    if origin is not None and type(None) in args:  # Optional[X] / X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is list:
        (item_type,) = args
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_type, name) for v in value if v != ""]
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            if isinstance(value, bool):  # YAML reads on/off/yes/no as booleans
                return "on" if value else "off"
            return str(value)
    except (TypeError, ValueError):
        raise DeepfakeError(
            f"config option '{name}' expects {getattr(typ, '__name__', typ)}, got {value!r}"
        ) from None
    return value


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise DeepfakeError(
                f"unknown config option '{name}'; known options in this section: "
                + ", ".join(sorted(f"{prefix}{k}" for k in known))
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise DeepfakeError(f"config option '{name}' is a section; give it a mapping")
            _apply(current, value, name + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], name))


SHIPPED = "experiments"  # the repository's experiments/, installed as the package deepfake.experiments
CONFIGS = "configs"


def shipped(*parts: str) -> resources.abc.Traversable:
    """A file or folder shipped with the package, e.g. ``shipped("configs", "demo.yaml")``."""
    item = resources.files(f"deepfake.{SHIPPED}")
    for part in filter(None, parts):
        item = item.joinpath(part)
    return item


def shipped_names(folder: str = CONFIGS, prefix: str = "") -> list[str]:
    """Names (without ``.yaml``) of the shipped YAML files in ``folder`` ("" for the search spaces)."""
    return sorted(f.name[:-5] for f in shipped(folder).iterdir()
                  if f.is_file() and f.name.endswith(".yaml") and f.name.startswith(prefix))


def find_file(value: str | os.PathLike, folder: str = CONFIGS) -> Path | resources.abc.Traversable:
    """The YAML file ``value`` names: the path itself when it exists (a path the user gives wins),
    else the shipped file of that name in ``folder`` ("" for search spaces). A bare name
    (``demo``, ``demo.yaml``) or a path in the repository's ``experiments/`` layout
    (``experiments/configs/demo.yaml``, from any folder) finds the shipped file. Returns ``Path(value)`` when
    nothing matches, for the caller's "no such file" error."""
    path = Path(value).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    former = "/".join(p for p in (SHIPPED, folder) if p)
    if path.parent.as_posix() in (".", former):
        candidate = shipped(folder, path.name if path.suffix else f"{path.name}.yaml")
        if candidate.is_file():
            return candidate
    return path


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = find_file(path, CONFIGS)
    if not path.is_file():
        raise DeepfakeError(f"config file {path} does not exist; give a YAML file or a shipped config: "
                            + ", ".join(shipped_names(CONFIGS)))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise DeepfakeError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    if not isinstance(data, dict):
        raise DeepfakeError(f"config file {path} must hold a mapping of sections (data, model, train, tracking)")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``"train.epochs=3"`` -> ``{"train": {"epochs": 3}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise DeepfakeError(f"override '{text}' must look like section.key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    return nest({key.strip(): yaml.safe_load(raw) if raw.strip() else ""})


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(values: dict[str, Any]) -> Config:
    cfg = Config()
    _apply(cfg, values)
    validate(cfg)
    if cfg.data.image_size == 0:
        cfg.data.image_size = backbones.get(cfg.model.backbone).native_size
    return cfg


def resolve(
    config_files: list[str | os.PathLike] | tuple = (),
    overrides: dict[str, Any] | None = None,
    set_args: list[str] | tuple = (),
) -> Config:
    """Defaults <- YAML files <- ``overrides`` (nested dict) <- ``--set`` strings."""
    values: dict[str, Any] = {}
    for path in config_files:
        values = merge(values, load_yaml(path))
    if overrides:
        values = merge(values, overrides)
    for text in set_args:
        values = merge(values, parse_override(text))
    return from_dict(values)


def validate(cfg: Config) -> None:
    def bad(option: str, why: str) -> None:
        raise DeepfakeError(f"config option '{option}' {why}")

    d, m, t = cfg.data, cfg.model, cfg.train
    if len(d.class_names) != 2 or len(set(d.class_names)) != 2:
        bad("data.class_names", "must name two different class folders, e.g. real,fake")
    if not 0 <= d.val_fraction < 1 or not 0 <= d.test_fraction < 1 or d.val_fraction + d.test_fraction >= 1:
        bad("data.val_fraction/test_fraction", "must be in [0, 1) and sum to less than 1")
    if m.backbone not in backbones.REGISTRY:
        bad("model.backbone", f"must be one of {', '.join(backbones.names())}, got {m.backbone!r}")
    spec = backbones.get(m.backbone)
    if d.image_size != 0 and d.image_size < 32:
        bad("data.image_size", f"must be at least 32 pixels (the backbone downsamples 32x), or 0 for the "
                               f"backbone's native size; got {d.image_size}")
    if d.batch_size < 1:
        bad("data.batch_size", "must be at least 1")
    n_datasets = 1 + len(d.extra_paths)
    if d.mix and len(d.mix) != n_datasets:
        bad("data.mix", f"gives {len(d.mix)} share(s) for {n_datasets} dataset(s) (--data); give one per dataset, "
                        "in --data order, e.g. --mix 2,1")
    if d.mix and (any(w < 0 for w in d.mix) or sum(d.mix) <= 0):
        bad("data.mix", f"must be shares of zero or more with a positive sum, got {d.mix}")
    if d.cache not in ("auto", "memory", "disk", "none"):
        bad("data.cache", "must be one of auto, memory, disk, none")
    if d.fit not in ("resize", "crop"):
        bad("data.fit", f"must be resize or crop, got {d.fit!r}")
    if not 1 <= d.test_crops <= 8:
        bad("data.test_crops", "must be between 1 and 8 (crops per side at evaluation and inference)")
    a = d.augment
    for name in ("blur_prob", "jpeg_prob"):
        if not 0 <= getattr(a, name) <= 1:
            bad(f"data.augment.{name}", "must be a probability in [0, 1]")
    if not 1 <= a.jpeg_quality_min <= 100:
        bad("data.augment.jpeg_quality_min", "must be in [1, 100]")
    sf = d.synthetic_fakes
    if sf.kind not in ("none", "sbi", "resynth", "both"):
        bad("data.synthetic_fakes.kind", f"must be one of none, sbi, resynth, both, got {sf.kind!r}")
    if sf.mask not in SYNTHETIC_MASKS:
        bad("data.synthetic_fakes.mask", f"must be one of {', '.join(SYNTHETIC_MASKS)}, got {sf.mask!r}")
    if not 0 < sf.fraction <= 1:
        bad("data.synthetic_fakes.fraction", f"must be in (0, 1] (the share of real images that also give a fake), "
                                             f"got {sf.fraction}")
    f, v = d.faces, d.video
    if f.detector != "mtcnn":
        bad("data.faces.detector", f"must be mtcnn, got {f.detector!r}")
    if f.mode not in ("largest", "all"):
        bad("data.faces.mode", "must be largest or all")
    if not 0 <= f.margin <= 2:
        bad("data.faces.margin", "must be in [0, 2] (a fraction of the face box's longer side)")
    if not 0 <= f.min_confidence < 1:
        bad("data.faces.min_confidence", "must be in [0, 1)")
    if f.min_size < 1 or f.detect_max_side < 64:
        bad("data.faces.min_size/detect_max_side", "must be at least 1 and 64 pixels")
    if v.frames < 1:
        bad("data.video.frames", "must be at least 1")
    if v.aggregate not in ("mean", "max", "topk"):
        bad("data.video.aggregate", "must be mean, max or topk")
    if v.top_k < 1:
        bad("data.video.top_k", "must be at least 1")
    if v.max_seconds <= 0 or v.max_frames < 1 or v.max_bytes < 1:
        bad("data.video.max_seconds/max_frames/max_bytes", "must be positive")
    if not 0.5 < d.audit_threshold <= 1:
        bad("data.audit_threshold", "must be a ROC-AUC in (0.5, 1], e.g. 0.8")
    if d.content_check_images < 20:
        bad("data.content_check_images", "must be at least 20 (images per class; fewer make the ROC-AUC noise)")
    if m.pooling not in ("avg", "max", "multi"):
        bad("model.pooling", "must be avg, max or multi")
    if not 0 <= m.dropout < 1:
        bad("model.dropout", "must be in [0, 1)")
    if any(u < 1 for u in m.head_units):
        bad("model.head_units", "must be positive layer widths, e.g. 256 or 512,128")
    if m.representation not in ("rgb", "npr", "highpass"):
        bad("model.representation", "must be rgb, npr or highpass")
    if t.epochs < 0 or t.fine_tune_epochs < 0:
        bad("train.epochs/fine_tune_epochs", "must be zero or more")
    if t.epochs + t.fine_tune_epochs < 1:
        bad("train.epochs", "and train.fine_tune_epochs cannot both be 0")
    if not 0 <= t.fine_tune_stages <= spec.stages:
        bad("train.fine_tune_stages", f"must be between 0 and {spec.stages} ({spec.name} has {spec.stages} stages)")
    if t.learning_rate <= 0 or t.fine_tune_learning_rate <= 0:
        bad("train.learning_rate", "must be positive")
    if t.mixed_precision not in ("auto", "off", "bfloat16", "float16"):
        bad("train.mixed_precision", "must be one of auto, off, bfloat16, float16")
    if t.backend not in ("auto", "tensorflow", "jax", "torch"):
        bad("train.backend", "must be one of auto, tensorflow, jax, torch")
    if t.jit_compile not in ("auto", "on", "off"):
        bad("train.jit_compile", "must be one of auto, on, off")


def default_tracking_uri(cfg_uri: str | None = None) -> str:
    return cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
