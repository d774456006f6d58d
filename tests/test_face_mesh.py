"""The 468-point face mesh (deepfake/face_mesh.py, the shipped ONNX model) and the self-blended masks it shapes
(deepfake/blend_masks.py): masks that follow the mesh, the fallbacks to MTCNN's keypoints and ellipses, their
counts, the mesh cache and data.synthetic_fakes.mask. Cheap: tiny drawn images, no dataset."""

import hashlib
import re

import numpy as np
import pytest
from PIL import Image

from deepfake import blend_masks as B
from deepfake import face_mesh as M
from deepfake import synthetic as S
from deepfake.demo import draw_face
from deepfake.errors import DeepfakeError
from tests.helpers import tiny_config

SIZE = 96


def fake_mesh(cx=40.0, cy=52.0, rx=22.0, ry=28.0, seed=0):
    """A stand-in mesh: the face's outline an ellipse (top at FOREHEAD, bottom at CHIN), the eye corners on a line a
    fifth of the way up, every other point inside."""
    rng = np.random.default_rng(seed)
    r, a = np.sqrt(rng.uniform(0, 0.8 ** 2, M.POINTS)), rng.uniform(0, 2 * np.pi, M.POINTS)
    points = np.stack([cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)], axis=1)
    theta = -np.pi / 2 + 2 * np.pi * np.arange(len(M.FACE_OVAL)) / len(M.FACE_OVAL)  # clockwise from the top
    points[list(M.FACE_OVAL)] = np.stack([cx + rx * np.cos(theta), cy + ry * np.sin(theta)], axis=1)
    for index, dx in zip(M.EYE_CORNERS, (-0.6, -0.2, 0.2, 0.6), strict=True):
        points[index] = (cx + dx * rx, cy - 0.2 * ry)
    return points.astype(np.float32)


def image(seed=0, size=SIZE):
    return draw_face(np.random.default_rng([seed, 5]), size)


# ----------------------------------------------------------------------------- the shipped model


def test_the_shipped_model_loads_and_gives_468_points_for_192_px_inputs():
    x = np.random.default_rng(0).uniform(0, 1, (2, M.INPUT_SIZE, M.INPUT_SIZE, 3)).astype(np.float32)
    points, presence = M.predict(x)  # a batch of two: the converted model's batch is dynamic
    assert points.shape == (2, 468, 2) and points.dtype == np.float32 and np.isfinite(points).all()
    assert presence.shape == (2,) and ((presence >= 0) & (presence <= 1)).all()
    one, _ = M.predict(x[1:])
    np.testing.assert_allclose(one[0], points[1], atol=1e-3)
    with pytest.raises(ValueError, match="192"):
        M.predict(x[:, :100])


def test_the_notice_names_the_shipped_model_checksum():
    notice = (M.model_path().parent / "NOTICE").read_text()
    digest = hashlib.sha256(M.model_path().read_bytes()).hexdigest()
    assert re.search(rf"converted face_landmark\.onnx:\s+{digest}", notice)
    assert "Apache License" in notice and "mediapipe==0.10.21" in notice


def test_no_face_gives_none_and_a_drawn_face_gives_a_mesh_on_it():
    assert M.landmarks(np.zeros((SIZE, SIZE, 3), np.uint8)) is None
    assert M.landmarks(np.full((SIZE, 70, 3), 128, np.uint8)) is None
    face = image(1, 160)
    found = M.landmarks_batch([face, np.zeros((64, 64, 3), np.uint8)])
    mesh = found[0]
    assert found[1] is None and mesh is not None and mesh.shape == (468, 2) and mesh.dtype == np.float32
    # on the drawn face: about the middle, eyes above the mouth, chin below the forehead
    assert abs(mesh[:, 0].mean() - 80) < 20 and 30 < mesh[:, 1].mean() < 120
    eyes_y, mouth_y = mesh[list(M.EYE_CORNERS), 1].mean(), mesh[[61, 291], 1].mean()
    assert mesh[M.FOREHEAD, 1] < eyes_y < mouth_y < mesh[M.CHIN, 1]
    # the mirrored face's mesh is mirrored
    flipped = M.landmarks(np.ascontiguousarray(face[:, ::-1]))
    assert abs((159 - flipped[:, 0].mean()) - mesh[:, 0].mean()) < 4


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("seed", range(4))
def test_a_mesh_blended_fake_differs_from_its_image_only_inside_the_mask(seed):
    picture = image(seed)
    fake, mask = S.self_blend(picture, np.random.default_rng(seed), fake_mesh(seed=seed))
    outside, inside = mask == 0, mask > 0
    assert outside.any() and inside.any()
    np.testing.assert_array_equal(fake[outside], picture[outside])
    changed = np.abs(fake.astype(int) - picture.astype(int)).sum(axis=-1) > 0
    assert changed[inside].mean() > 0.3


def test_the_mask_follows_the_mesh_covers_its_hull_and_reaches_above_it():
    mesh = fake_mesh()
    inner = mesh.mean(axis=0) + (mesh - mesh.mean(axis=0)) * 0.8  # the hull, less its outer band
    for seed in range(10):
        mask = B.blend_mask(SIZE, SIZE, np.random.default_rng(seed), mesh)
        moved = B.blend_mask(SIZE, SIZE, np.random.default_rng(seed), mesh + np.float32([20, 0]))
        columns = np.arange(SIZE)
        shift = (moved * columns).sum() / moved.sum() - (mask * columns).sum() / mask.sum()
        assert shift == pytest.approx(20, abs=1)  # the same random mask, 20 px to the right
        assert (mask[inner[:, 1].astype(int), inner[:, 0].astype(int)] > 0).all()
        top = np.flatnonzero(mask.max(axis=1) > 0)[0]
        assert top < mesh[:, 1].min() - 2  # the forehead: above the mesh's top
        outline = B.mesh_outline(mesh, np.random.default_rng(seed))
        height = mesh[M.CHIN, 1] - mesh[M.FOREHEAD, 1]
        assert outline[:, 1].min() <= mesh[M.FOREHEAD, 1] - B.FOREHEAD_LIFT[0] * height + 1e-3
        assert outline[:, 1].max() == pytest.approx(mesh[M.CHIN, 1])  # the chin is not moved
        assert mask[85:, 70:].max() == 0  # nowhere near the far corner


def test_points_kinds_and_their_counts():
    mesh, keypoints = fake_mesh(), np.float32([[30, 45], [50, 45], [40, 55], [32, 65], [48, 65]])
    rows = np.stack([B.pack(mesh=mesh), B.pack(keypoints=keypoints), B.pack(), B.pack(keypoints=keypoints)])
    assert [B.points_kind(r) for r in rows] == ["mesh", "keypoints", "ellipse", "keypoints"]
    assert B.points_kind(None) == B.points_kind(np.full((468, 2), -1.0)) == B.points_kind(np.full((5, 2), -1)) \
        == "ellipse"
    assert B.points_kind(dict(zip(B.KEYPOINT_NAMES, keypoints.tolist(), strict=True))) == "keypoints"
    assert S.mask_counts(rows) == {"mesh": 1, "keypoints": 2, "ellipse": 1}
    assert S.mask_counts(rows, [0, 1, 0, 1]) == {"mesh": 1, "keypoints": 0, "ellipse": 1}  # the reals only
    # each kind gives its own mask: the keypoint mask is not the mesh's, the ellipse is neither
    masks = [B.blend_mask(SIZE, SIZE, np.random.default_rng(0), r) for r in rows[:3]]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def test_fake_from_seed_blends_through_the_mesh_it_is_given():
    picture = image(3, 32).astype(np.float32)
    corner = fake_mesh(9, 10, 6, 7)  # a small face in the top left corner
    for seed in range(3):
        out = S.fake_from_seed(picture, B.pack(mesh=corner), np.array([seed, 1]), b"sbi")
        changed = np.abs(out - picture).sum(axis=-1) > 0
        assert changed[6:14, 5:13].mean() > 0.5 and not changed[24:, 24:].any()


# ----------------------------------------------------------------------------- training points and fallbacks


def write_images(folder, pictures):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, picture in enumerate(pictures):
        path = folder / f"{i}.png"
        Image.fromarray(picture).save(path)
        paths.append(str(path))
    return paths


def test_no_mesh_falls_back_to_keypoints_then_ellipse_and_is_counted(tmp_path, monkeypatch, caplog):
    from deepfake import faces

    blank = [np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 90, np.uint8), np.zeros((64, 64, 3), np.uint8)]
    paths = write_images(tmp_path / "img", blank)
    keypoints = np.float32([[22, 26], [42, 26], [32, 36], [25, 46], [39, 46]])
    face = faces.Face((4.0, 4.0, 60.0, 60.0), 0.99, dict(zip(B.KEYPOINT_NAMES, keypoints.tolist(), strict=True)))
    asked = []

    def detect(images, cfg):
        asked.append(len(images))
        return [[face], []][:len(images)]

    monkeypatch.setattr(faces, "detect_faces_batch", detect)
    cfg = tiny_config("data.synthetic_fakes.kind=sbi", f"data.media_cache_dir={tmp_path / 'cache'}").data
    assert cfg.synthetic_fakes.mask == "mesh"
    with caplog.at_level("INFO", logger="deepfake.synthetic"):
        points = S.training_keypoints(paths, [0, 0, 1], cfg)  # the model runs: no face on blank images
    assert asked == [2]  # MTCNN asked about the reals the mesh missed
    assert points.shape == (3, 468, 2) and points.dtype == np.float32
    np.testing.assert_allclose(points[0, :5], keypoints / 2)  # the decoded square is 32 px
    assert S.mask_counts(points, [0, 0, 1]) == {"mesh": 0, "keypoints": 1, "ellipse": 1}
    assert "mesh 0, keypoints 1, ellipse 1" in caplog.text
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [M.CACHE_FILE, S.KEYPOINTS_FILE]


def test_meshes_are_found_once_cached_and_scaled(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "img", [image(i, 64) for i in range(3)])
    mesh = fake_mesh(32, 30, 14, 18)
    calls = []

    def found(images):
        calls.append(len(images))
        return [mesh, None, mesh + 2][:len(images)]

    monkeypatch.setattr(M, "landmarks_batch", found)
    first = M.meshes_for(paths, 32, tmp_path / "cache")
    assert calls == [3] and first.shape == (3, 468, 2)
    np.testing.assert_allclose(first[0], mesh / 2, atol=1e-4)  # fractions of the 64 px image, at 32 px
    assert np.isnan(first[1]).all()
    np.testing.assert_array_equal(M.meshes_for(paths, 32, tmp_path / "cache"), first)
    assert calls == [3]  # from the cache, which is all that is left behind
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [M.CACHE_FILE]
    # the input pipeline's array: the mesh where found, the keypoints (MTCNN, monkeypatched away) then ellipses
    monkeypatch.setattr(S, "keypoints_for", lambda p, cfg: np.full((len(p), 5, 2), -1.0, np.float32))
    cfg = tiny_config("data.synthetic_fakes.kind=both", f"data.media_cache_dir={tmp_path / 'cache'}").data
    points = S.training_keypoints(paths, [0, 0, 0], cfg)
    assert calls == [3] and S.mask_counts(points) == {"mesh": 2, "keypoints": 0, "ellipse": 1}


def test_a_missing_mesh_model_falls_back_to_keypoints_with_a_warning(tmp_path, monkeypatch, caplog):
    paths = write_images(tmp_path / "img", [image(0, 64)])

    def missing():
        raise DeepfakeError("the face mesh model x.onnx is missing")

    monkeypatch.setattr(M, "_get_session", missing)
    monkeypatch.setattr(S, "keypoints_for", lambda p, cfg: np.full((len(p), 5, 2), 3.0, np.float32))
    cfg = tiny_config("data.synthetic_fakes.kind=sbi", f"data.media_cache_dir={tmp_path / 'cache'}").data
    with caplog.at_level("WARNING", logger="deepfake.synthetic"):
        points = S.training_keypoints(paths, [0], cfg)
    assert S.mask_counts(points) == {"mesh": 0, "keypoints": 1, "ellipse": 0}
    assert "no face mesh (the face mesh model x.onnx is missing)" in caplog.text


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("value", ["mesh", "keypoints", "ellipse"])
def test_config_takes_each_mask(value):
    assert tiny_config(f"data.synthetic_fakes.mask={value}").data.synthetic_fakes.mask == value


@pytest.mark.parametrize("value", ["dlib", "", "MESH"])
def test_config_refuses_other_masks(value):
    with pytest.raises(DeepfakeError) as err:
        tiny_config(f"data.synthetic_fakes.mask={value}")
    message = str(err.value)
    assert "data.synthetic_fakes.mask' must be one of mesh, keypoints, ellipse" in message and "\n" not in message
