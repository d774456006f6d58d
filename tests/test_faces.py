"""Face detection and square face crops (deepfake/faces.py) on synthetic faces (deepfake.demo.draw_face).

MTCNN is built once for the module (the first test that detects pays for it, TensorFlow's import included).
"""

import dataclasses
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deepfake import faces
from deepfake.config import FaceConfig
from deepfake.demo import draw_face, make_image
from deepfake.errors import DeepfakeError

CFG = FaceConfig()


def _face(seed: int, size: int) -> np.ndarray:
    return draw_face(np.random.default_rng([seed, 41]), size)


def _canvas(height: int, width: int, colour: tuple[int, int, int] = (70, 110, 150)) -> np.ndarray:
    """A smooth horizontal gradient (no face in it)."""
    ramp = np.linspace(0.7, 1.2, width)[None, :, None]
    return np.clip(np.broadcast_to(np.array(colour) * ramp, (height, width, 3)), 0, 255).astype(np.uint8)


def _paste(canvas: np.ndarray, tile: np.ndarray, x: int, y: int) -> np.ndarray:
    out = canvas.copy()
    out[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return out


def _inside(face: faces.Face, x0: float, y0: float, x1: float, y1: float) -> bool:
    return x0 <= face.box[0] < face.box[2] <= x1 and y0 <= face.box[1] < face.box[3] <= y1


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return w * h / (area - w * h)


def _edge_padded(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """What ``box`` of ``rgb`` must be, edges repeated: cut from the image padded generously."""
    pad = 200
    big = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    x0, y0, x1, y1 = box
    return big[y0 + pad:y1 + pad, x0 + pad:x1 + pad]


@pytest.fixture(scope="module")
def face_image():
    return _face(1, 160)


@pytest.fixture(scope="module")
def found(face_image):
    return faces.detect_faces(face_image, CFG)


def test_a_drawn_face_is_found_and_cropped_square_with_the_margin(face_image, found):
    assert len(found) == 1
    face = found[0]
    assert face.confidence >= 0.95
    assert _inside(face, 0, 0, 160, 160)
    assert set(face.keypoints) == set(faces.KEYPOINTS)
    x0, y0, x1, y1 = face.box
    assert all(x0 < x < x1 and y0 < y < y1 for x, y in face.keypoints.values())
    left, right = face.keypoints["left_eye"], face.keypoints["right_eye"]
    assert left[0] < right[0] and abs(left[1] - right[1]) < 5  # MTCNN's left eye is the one on the image's left
    assert faces.detect_faces(face_image, CFG) == found  # deterministic

    (same, crop), = faces.face_crops(face_image, CFG)
    assert same == face
    side = face.side()
    assert side == max(x1 - x0, y1 - y0)
    assert crop.dtype == np.uint8 and crop.shape[0] == crop.shape[1] and crop.shape[2] == 3
    assert abs(crop.shape[0] - side * (1 + 2 * CFG.margin)) <= 1
    x0, y0, x1, y1 = faces.crop_box(face, 160, 160, CFG.margin)
    assert (x1 - x0, y1 - y0) == crop.shape[:2]
    assert abs((x0 + x1) / 2 - (face.box[0] + face.box[2]) / 2) <= 0.5  # centred on the face box
    assert abs((y0 + y1) / 2 - (face.box[1] + face.box[3]) / 2) <= 0.5
    np.testing.assert_array_equal(crop, _edge_padded(face_image, (x0, y0, x1, y1)))

    wide = faces.crop_face(face_image, face, margin=0.6)
    assert abs(wide.shape[0] - side * 2.2) <= 1


def test_crop_box_arithmetic_and_edge_padding_without_the_detector():
    rgb = np.random.default_rng(0).integers(1, 256, (60, 80, 3), dtype=np.uint8)  # no black pixel
    face = faces.Face((-5.0, 10.0, 25.0, 40.0), 0.99, {})  # reaches beyond the left edge
    assert faces.crop_box(face, 80, 60, 0.3) == (-14, 1, 34, 49)  # side round(30 * 1.6) = 48, centre (10, 25)
    crop = faces.crop_face(rgb, face, 0.3)
    assert crop.shape == (48, 48, 3)
    np.testing.assert_array_equal(crop, _edge_padded(rgb, (-14, 1, 34, 49)))
    np.testing.assert_array_equal(crop[:, :14], np.repeat(rgb[1:49, :1], 14, axis=1))  # the left edge, repeated
    assert crop.min() > 0
    corner = faces.crop_face(rgb, faces.Face((70.0, 50.0, 90.0, 70.0), 0.99, {}), 0.5)  # beyond right and bottom
    assert corner.shape == (40, 40, 3) and (corner[-1, -1] == rgb[-1, -1]).all()
    with pytest.raises(ValueError, match="outside"):
        faces.crop_box(faces.Face((100.0, 10.0, 110.0, 20.0), 0.99, {}), 80, 60, 0.0)


def test_a_face_at_the_edge_is_padded_by_repeating_the_edge():
    rgb = np.ascontiguousarray(_face(1, 160)[25:, 40:])  # the face's box now starts near the top-left corner
    (face, crop), = faces.face_crops(rgb, CFG)
    x0, y0, x1, y1 = faces.crop_box(face, rgb.shape[1], rgb.shape[0], CFG.margin)
    assert x0 < 0 and y0 < 0  # the crop reaches beyond the image
    np.testing.assert_array_equal(crop, _edge_padded(rgb, (x0, y0, x1, y1)))
    assert crop[:-y0, :-x0].min() > 0  # the corner beyond the image is no black border


@pytest.fixture(scope="module")
def two_faces():
    canvas = _canvas(180, 300)
    return _paste(_paste(canvas, _face(2, 160), 10, 10), _face(3, 112), 180, 40)


def test_mode_all_gives_every_face_largest_first_and_mode_largest_one(two_faces):
    crops = faces.face_crops(two_faces, dataclasses.replace(CFG, mode="all"))
    assert len(crops) == 2
    (big, big_crop), (small, small_crop) = crops
    assert _inside(big, 10, 10, 170, 170) and _inside(small, 180, 40, 292, 152)
    assert big.area() > small.area() and big_crop.shape[0] > small_crop.shape[0]
    (only, _), = faces.face_crops(two_faces, CFG)  # largest, the default
    assert only == big


def test_no_face_gives_nothing(monkeypatch):
    noise = np.asarray(Image.open(io.BytesIO(make_image(np.random.default_rng(0), 160, fake=False))).convert("RGB"))
    assert faces.detect_faces(noise, CFG) == []
    assert faces.face_crops(_canvas(120, 200), CFG) == []
    assert faces.face_crops(np.full((90, 90, 3), 200, np.uint8), CFG) == []

    def no_detector():
        raise AssertionError("the detector must not run on a tiny image")

    monkeypatch.setattr(faces, "_get_detector", no_detector)
    assert faces.detect_faces(np.full((16, 40, 3), 128, np.uint8), CFG) == []
    assert faces.detect_faces_batch([np.full((20, 20, 3), 128, np.uint8)], CFG) == [[]]


def test_min_size_and_min_confidence_filter(face_image, found):
    face = found[0]
    side = face.side()
    assert faces.detect_faces(face_image, dataclasses.replace(CFG, min_size=int(side))) == found
    assert faces.detect_faces(face_image, dataclasses.replace(CFG, min_size=int(side) + 1)) == []
    assert face.confidence < 1
    below, above = face.confidence - 0.01, (face.confidence + 1) / 2
    assert faces.detect_faces(face_image, dataclasses.replace(CFG, min_confidence=below)) == found
    assert faces.detect_faces(face_image, dataclasses.replace(CFG, min_confidence=above)) == []


def test_a_large_image_is_downscaled_for_detection_and_the_box_mapped_back(monkeypatch):
    tile = _face(4, 400)
    large = _paste(_canvas(900, 1600), tile, 900, 300)
    large[:100, :300] = (np.indices((100, 300)).sum(axis=0) % 2 * 255)[..., None]  # a 1 px checkerboard
    alone = faces.detect_faces(tile, CFG)  # 400 px: detected at full size
    assert len(alone) == 1

    real = faces._get_detector()
    seen = []

    class Spy:
        def detect_faces(self, image, **kwargs):
            seen.append(image)
            return real.detect_faces(image, **kwargs)

    monkeypatch.setattr(faces, "_get_detector", Spy)
    (face,) = faces.detect_faces(large, CFG)
    assert [image.shape for image in seen] == [(360, 640, 3)]
    assert seen[0][:35, :115].std() < 20  # downscaled with antialiasing: the checkerboard became grey
    assert _inside(face, 900, 300, 1300, 700)
    expected = tuple(v + d for v, d in zip(alone[0].box, (900, 300, 900, 300), strict=True))
    assert _iou(face.box, expected) > 0.85
    assert max(abs(a - b) for a, b in zip(face.box, expected, strict=True)) < 12  # 400 px face, 2.5x downscale
    for name, (x, y) in face.keypoints.items():
        ex, ey = alone[0].keypoints[name]
        assert abs(x - ex - 900) < 6 and abs(y - ey - 300) < 6, name
    (crop_face, crop), = faces.face_crops(large, CFG)
    assert crop_face == face and face.side() > 100
    assert abs(crop.shape[0] - face.side() * (1 + 2 * CFG.margin)) <= 1  # cut from the full resolution


def test_detect_faces_batch_equals_detect_faces(two_faces, face_image):
    frame = _paste(_canvas(180, 320), _face(5, 80), 200, 60)
    images = [face_image, _face(6, 96), frame, _face(7, 160), np.full((64, 64, 3), 90, np.uint8), two_faces,
              np.full((12, 12, 3), 90, np.uint8), _face(8, 160)]
    batch = faces.detect_faces_batch(images, CFG)
    single = [faces.detect_faces(image, CFG) for image in images]
    assert [len(b) for b in batch] == [len(s) for s in single] == [1, 1, 1, 1, 0, 2, 0, 1]
    for b_faces, s_faces in zip(batch, single, strict=True):
        for b, s in zip(b_faces, s_faces, strict=True):
            np.testing.assert_allclose(b.box, s.box, atol=0.01)  # measured: within 1e-4 px
            assert abs(b.confidence - s.confidence) < 1e-5  # measured: 1.2e-7
            for name in faces.KEYPOINTS:
                np.testing.assert_allclose(b.keypoints[name], s.keypoints[name], atol=0.01)


def test_settings_change_with_what_changes_a_crop():
    base = faces.settings(CFG)
    assert base["detector"] == "mtcnn" and base["detector_version"]
    assert {"mode", "margin", "min_confidence", "min_size", "detect_max_side"} <= set(base)
    assert faces.settings(dataclasses.replace(CFG, margin=0.4)) != base
    assert faces.settings(dataclasses.replace(CFG, detect_max_side=1024)) != base
    assert faces.settings(dataclasses.replace(CFG, enabled=True)) == base  # switching on changes no crop


def test_missing_mtcnn_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(faces, "_detector", None)
    monkeypatch.setitem(sys.modules, "mtcnn", None)  # import mtcnn now fails
    with pytest.raises(DeepfakeError, match=r"pip install mtcnn") as info:
        faces.detect_faces(_face(1, 96), CFG)
    assert "\n" not in str(info.value)


def test_importing_the_module_loads_no_detector():
    code = "import sys, deepfake.faces; print(sorted({'tensorflow', 'mtcnn', 'keras'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
