"""Numeric precision: the policy `train.mixed_precision=auto` picks per device (GPU list and CPU flags given,
so no GPU is needed), the run tags that record it, and the float32 islands of a mixed_bfloat16 detector."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepfake import backend as BK  # noqa: E402
from deepfake import config as C  # noqa: E402
from deepfake import model as M  # noqa: E402
from deepfake import precision as P  # noqa: E402
from deepfake.precision import Device  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

SIZE = 32
EPYC = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
XEON_AMX = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx512f amx_bf16 amx_tile avx512_bf16\n"
OLD_CPU = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2690 v4\nflags\t\t: fpu sse avx2\n\nprocessor\t: 1\n"


def gpu(cc, name="NVIDIA A100-SXM4-40GB"):
    return Device("gpu", name, cc)


@pytest.mark.parametrize("devices, policy, reason", [
    ([gpu((8, 0))], "mixed_float16", "tensor cores"),
    ([gpu((7, 0), "Tesla V100")], "mixed_float16", "Tesla V100"),
    ([gpu((6, 1), "GeForce GTX 1080")], "float32", "6.1 < 7.0"),
    ([gpu((8, 6)), gpu((6, 0), "Tesla P100")], "float32", "8.6, 6.0"),  # the slowest GPU decides
    ([gpu(None, "/physical_device:GPU:0")], "float32", "unknown"),
    ([P.parse_cpuinfo(EPYC)], "mixed_bfloat16", "avx512_bf16"),
    ([P.parse_cpuinfo(XEON_AMX)], "mixed_bfloat16", "amx_bf16, avx512_bf16"),
    ([P.parse_cpuinfo(OLD_CPU)], "float32", "no avx512_bf16 or amx_bf16"),
    ([], "float32", "CPU without"),
    ([gpu((8, 0)), P.parse_cpuinfo(EPYC)], "mixed_float16", "A100"),  # TensorFlow trains on the GPU
])
def test_auto_precision_per_device(devices, policy, reason):
    chosen, why = P.choose_precision(devices, "resnet50")
    assert chosen == policy
    assert reason in why


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_b0"])
def test_auto_precision_keeps_float32_for_backbones_slower_in_bfloat16_on_cpu(backbone):
    policy, why = P.choose_precision([P.parse_cpuinfo(EPYC)], backbone)
    assert policy == "float32" and backbone in why and "slower" in why
    assert P.choose_precision([gpu((8, 0))], backbone)[0] == "mixed_float16"  # tensor cores: any backbone


def test_cpuinfo_gives_the_model_name_and_the_bfloat16_flags_only():
    assert P.parse_cpuinfo(XEON_AMX) == Device("cpu", "Intel(R) Xeon(R) Platinum 8481C", None,
                                               frozenset({"amx_bf16", "avx512_bf16"}))
    assert P.parse_cpuinfo(OLD_CPU) == Device("cpu", "Intel(R) Xeon(R) CPU E5-2690 v4")
    assert P.parse_cpuinfo("") == Device("cpu", "unknown CPU")


def test_configure_runtime_applies_and_records_the_choice():
    auto = C.resolve(set_args=["train.mixed_precision=auto"])
    runtime = P.configure_runtime(auto, [gpu((8, 9), "NVIDIA L4")])
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert runtime == {"device": "gpu", "device_name": "NVIDIA L4", "compute_capability": "8.9",
                       "precision_policy": "mixed_float16", "jit_compile": True, "backend": "tensorflow",
                       "backend_version": BK.version("tensorflow"), "keras_version": keras.__version__,
                       "precision_reason": "GPU with tensor cores (compute capability >= 7.0): NVIDIA L4"}
    runtime = P.configure_runtime(auto, [P.parse_cpuinfo(EPYC)])
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert runtime["device"] == "cpu" and runtime["device_name"] == "AMD EPYC 9B14"
    assert runtime["cpu_flags"] == "avx512_bf16" and runtime["jit_compile"] is False
    forced = P.configure_runtime(C.resolve(set_args=["train.mixed_precision=off"]), [P.parse_cpuinfo(EPYC)])
    assert keras.mixed_precision.global_policy().name == "float32"
    assert forced["precision_reason"] == "train.mixed_precision=off"
    assert P.configure_runtime(auto, [P.parse_cpuinfo(OLD_CPU)])["cpu_flags"] == "none"


def test_both_tensorflow_builds_installed_is_warned_about():
    assert P.tensorflow_clash(["tensorflow-cpu"]) is None and P.tensorflow_clash(["tensorflow"]) is None
    assert "pip uninstall -y tensorflow tensorflow-cpu" in P.tensorflow_clash(["tensorflow", "tensorflow-cpu"])


def test_this_machine_is_described():
    (device, *_) = P.local_devices()
    assert device.kind in ("cpu", "gpu") and device.name


def bf16_and_float32_twins(backbone):
    """The same detector (same weights) built under mixed_bfloat16 and under float32."""
    cfg = tiny_config(f"model.backbone={backbone}", "model.head_units=[16]")
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = M.build_model(cfg)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    full = M.build_model(cfg)
    full.set_weights(mixed.get_weights())
    return mixed, full


def stem_output(model):
    """Pixels -> the output of the backbone's first convolution (where pixel-level traces become features)."""
    backbone = M.backbone_of(model)
    stem = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D))
    inner = keras.Model(backbone.input, stem.output)
    return lambda x: keras.ops.convert_to_numpy(inner(M.input_layer_of(model)(x))).astype("float64")


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_lite0"])
def test_mixed_bfloat16_keeps_float32_islands(backbone, tmp_path):
    mixed, full = bf16_and_float32_twins(backbone)
    assert M.backbone_of(mixed).layers[-2].dtype_policy.name == "mixed_bfloat16"  # the body is bfloat16
    rng = np.random.default_rng(0)
    # Bright pixels (ResNet50's input then reaches 146, where bfloat16's step is 1) and copies that differ by
    # less than a grey level: the traces a detector looks for.
    base = rng.uniform(200, 250, (1, SIZE, SIZE, 3)).astype("float32")
    x = np.concatenate([base, base + rng.uniform(-0.5, 0.5, base.shape).astype("float32")])

    assert M.input_layer_of(mixed)(x).dtype == "float32"
    stem_mixed, stem_full = stem_output(mixed)(x), stem_output(full)(x)
    trace_mixed, trace_full = stem_mixed[1] - stem_mixed[0], stem_full[1] - stem_full[0]
    np.testing.assert_allclose(trace_mixed, trace_full, atol=1e-3 * np.abs(trace_full).max())

    features = M.feature_extractor(mixed)(x)
    assert features.dtype == "float32"
    assert all(layer.dtype_policy.name == "float32" for layer in M.head_of(mixed).layers[1:])
    assert mixed(x).dtype == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mixed(x)), keras.ops.convert_to_numpy(full(x)), atol=0.02)

    # The head sees features that differ in the fourth digit as float32 does (bfloat16 keeps two or three).
    feats = keras.ops.convert_to_numpy(M.feature_extractor(full)(x[:1]))
    nudged = np.concatenate([feats, feats * (1 + rng.uniform(-1e-3, 1e-3, feats.shape).astype("float32"))])
    got = keras.ops.convert_to_numpy(M.head_of(mixed)(nudged, training=False))
    want = keras.ops.convert_to_numpy(M.head_of(full)(nudged, training=False))
    np.testing.assert_allclose(got[1] - got[0], want[1] - want[0], atol=1e-7)

    # A checkpoint keeps its islands (resuming trains the same model), and the float32 copy that is saved
    # and served predicts what the float32 build does.
    mixed.save(tmp_path / "mixed.keras")
    loaded = M.load_keras_model(tmp_path / "mixed.keras")
    assert M.feature_extractor(loaded)(x).dtype == "float32"
    np.testing.assert_allclose(stem_output(loaded)(x), stem_mixed, rtol=1e-6, atol=1e-6)
    # (the float32 copy is built without weights even where the configuration names some)
    cfg = tiny_config(f"model.backbone={backbone}", "model.head_units=[16]", "model.weights=auto")
    copy = M.as_float32(mixed, cfg)
    assert {layer.dtype_policy.name for layer in M.backbone_of(copy).layers} == {"float32"}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(copy(x)), keras.ops.convert_to_numpy(full(x)), atol=1e-6)


def test_float32_policy_builds_no_islands():
    _, full = bf16_and_float32_twins("efficientnet_lite0")
    backbone = M.backbone_of(full)
    assert M.keep_float32_islands(backbone) is backbone
