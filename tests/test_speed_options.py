"""Phase 2's speed options (learning-rate schedule, staged unfreezing, frozen depthwise kernels, sparse validation,
TensorFlow's CPU runtime settings) change how the detector learns, never what it is."""

import math

import keras
import numpy as np
import pytest

from deepfake import backbones as B
from deepfake import checkpoints as CK
from deepfake import data as D
from deepfake import model as M
from deepfake import precision as P
from deepfake import training as T
from deepfake.errors import DeepfakeError
from deepfake.input_pipeline import make_dataset

LITE = ("model.backbone=efficientnet_lite0", "model.pooling=multi")


def stages_trainable(model: keras.Model) -> set[int]:
    """The backbone stages with a trainable layer that has weights."""
    spec = M.backbone_spec(model)
    return {spec.impl().stage_of(spec, layer.name) for layer in M.backbone_of(model).layers
            if layer.trainable and layer.weights}


def batchnorm_frozen(model: keras.Model) -> bool:
    return not any(layer.trainable for layer in M.backbone_of(model).layers
                   if isinstance(layer, keras.layers.BatchNormalization))


def same_kind(trained: keras.Model, cfg) -> None:
    """``trained`` has the architecture of a detector built by default for ``cfg``, and its outputs on its weights."""
    fresh = M.build_model(cfg)

    def kinds(m: keras.Model) -> list:  # every layer, those of the sub-models (backbone, head) included
        return [kind for layer in m.layers for kind in (kinds(layer) if isinstance(layer, keras.Model) else
                                                        [(type(layer).__name__, [w.shape for w in layer.weights])])]

    assert kinds(trained) == kinds(fresh)
    fresh.set_weights(trained.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(fresh.predict(x, verbose=0), trained.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def datasets(cfg):
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed, check_images=False)
    return (make_dataset(info.splits["train"], cfg.data, training=True, seed=1),
            make_dataset(info.splits["val"], cfg.data, training=False, seed=1))


class _Stop(Exception):
    pass


class Record(keras.callbacks.Callback):
    """Per epoch: the trainable backbone stages, whether BatchNorm is frozen, and the learning rate at its start;
    raises :class:`_Stop` after epoch ``kill`` (a killed run)."""

    def __init__(self, seen: dict, kill: int | None = None):
        super().__init__()
        self.seen, self.kill = seen, kill

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.seen[epoch] = (stages_trainable(self.model), batchnorm_frozen(self.model), lr)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.kill:
            raise _Stop()


def test_cosine_schedule_warms_up_then_decays_to_zero_on_one_curve_across_fits():
    s = M.WarmupCosine(1.0, total_steps=10, warmup_steps=2)
    rates = [float(s(step)) for step in range(11)]
    assert rates[:3] == pytest.approx([0.5, 1.0, 1.0])  # linear warm-up, then the cosine from the peak
    assert rates[6] == pytest.approx(0.5) and rates[10] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b for a, b in zip(rates[2:-1], rates[3:], strict=True))
    later = M.WarmupCosine(1.0, total_steps=10, warmup_steps=2, offset=6)  # a fit starting 6 steps in
    assert float(later(2)) == pytest.approx(rates[8])
    assert M.WarmupCosine.from_config(later.get_config()).get_config() == later.get_config()
    t = T.TrainConfig(fine_tune_learning_rate=1e-4, fine_tune_epochs=5, fine_tune_lr_warmup_epochs=1)
    assert T.fine_tune_learning_rate(t, steps=3, start=2) == 1e-4  # constant: today's flat rate
    t.fine_tune_schedule = "cosine"
    cosine = T.fine_tune_learning_rate(t, steps=3, start=2)
    assert cosine.get_config() == {"peak": 1e-4, "total_steps": 15, "warmup_steps": 3, "offset": 6}
    with pytest.raises(DeepfakeError, match="fine_tune_schedule"):
        T.check_speed_options(T.TrainConfig(fine_tune_schedule="linear"))
    with pytest.raises(DeepfakeError, match="validation_freq"):
        T.check_speed_options(T.TrainConfig(validation_freq=0))


def test_frozen_depthwise_kernels_train_all_else_and_leave_the_model_as_it_is(tiny_cfg):
    cfg = tiny_cfg(*LITE)
    model = M.build_model(cfg)
    layers = M.backbone_of(model).layers
    depthwise = {layer.name for layer in layers if isinstance(layer, keras.layers.DepthwiseConv2D)}
    n_every = M.set_fine_tune(model, 8)
    every = {layer.name for layer in layers if layer.trainable and layer.weights}
    n_some = M.set_fine_tune(model, 8, depthwise=False)
    some = {layer.name for layer in layers if layer.trainable and layer.weights}
    assert depthwise and every - some == depthwise and n_every - n_some == len(depthwise)
    assert batchnorm_frozen(model) and stages_trainable(model) == set(range(1, 9))
    before = {layer.name: layer.get_weights()[0].copy() for layer in layers if layer.weights}
    T.compile_model(model, 1e-2)
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.train_on_batch(x, np.array([[0.0], [1.0]] * 4, dtype="float32"))
    changed = {layer.name for layer in layers if layer.weights and
               not np.array_equal(before[layer.name], layer.get_weights()[0])}
    assert not changed & depthwise and "top_conv" in changed and "stem_conv" in changed
    same_kind(model, cfg)


@pytest.mark.slow
def test_staged_unfreezing_cosine_schedule_and_sparse_validation_resume_in_the_right_half(tiny_split_dataset,
                                                                                          tmp_path, tiny_cfg):
    cfg = tiny_cfg(*LITE, "train.epochs=0", "train.fine_tune_epochs=3", "train.fine_tune_stages=3",
                   "train.fine_tune_warmup_stages=1", "train.fine_tune_warmup_epochs=2", "train.patience=1",
                   "train.fine_tune_schedule=cosine", "train.fine_tune_lr_warmup_epochs=1",
                   "train.fine_tune_learning_rate=1e-3", "train.validation_freq=2", "data.batch_size=16",
                   data=tiny_split_dataset)
    train_ds, val_ds = datasets(cfg)
    steps = T.steps_per_epoch(train_ds)
    ckpt, seen = tmp_path / "ckpt", {}
    with pytest.raises(_Stop):  # killed after the first of the two top-stage epochs, which was not validated
        T.train(cfg, train_ds, val_ds, ckpt, callbacks=[Record(seen, kill=0)], verbose=0)
    state = CK.read_state(ckpt)
    assert state["epochs_done"] == 1 and state["phase"] == 2 and T.SWITCH_KEY not in state
    assert "val_auc" not in state["history"] and state["best"] is None
    result = T.train(cfg, train_ds, val_ds, ckpt, callbacks=[Record(seen)], resume=True, verbose=0)
    assert sorted(seen) == [0, 1, 2] and result.resumed_from_epoch == 1
    last = B.get("efficientnet_lite0").stages  # 8
    top1, top3 = {last}, {last - 2, last - 1, last}
    assert [seen[e][0] for e in (0, 1, 2)] == [top1, top1, top3]  # resumed into the top-stage half
    assert all(seen[e][1] for e in (0, 1, 2))  # BatchNorm frozen throughout
    curve = M.WarmupCosine(1e-3, total_steps=3 * steps, warmup_steps=steps)
    for epoch in (0, 1, 2):  # one curve across the kill, the resume and the switch to every stage
        assert seen[epoch][2] == pytest.approx(float(curve(epoch * steps)), rel=1e-5)
    state = CK.read_state(ckpt)
    assert state["finished"] and state[T.SWITCH_KEY] == 2
    # Validation every 2nd epoch, counted back from the last of each half: one value per epoch, NaN when none.
    assert T.validation_epochs(1, 6, 1) == 1 and T.validation_epochs(1, 6, 2) == [2, 4, 6]
    history = result.history
    assert len(history["loss"]) == len(history["val_auc"]) == len(history["val_loss"]) == 3
    assert [math.isnan(v) for v in history["val_auc"]] == [True, False, False]
    same_kind(result.model, cfg)


def test_backend_defaults_fill_only_what_the_user_left_unset():
    environ = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert P.backend_defaults(environ) == {"TF_NUM_INTEROP_THREADS": "1"}
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTEROP_THREADS": "1"}
    assert P.backend_defaults({}) == P.BACKEND_DEFAULTS
    settings = P.backend_settings()
    assert settings["onednn"] in ("on", "off") and set(settings) == {"onednn", "inter_op_threads", "intra_op_threads"}
