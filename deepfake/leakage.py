"""Leakage check: the same (or nearly the same) image in two splits inflates test metrics.

Exact duplicates are found by content hash (SHA-256 of the file), near duplicates by
perceptual hash (``imagehash.phash``, Hamming distance at most ``max_distance``).
With ``data.dedupe`` the copy in the later split is removed (train < val < test).

Pictures made from one source (a video's frames, an image's face crops: :mod:`deepfake.media`) are checked
one by one but reported and removed per source: a leak names the two videos, and dedupe removes every frame
of the later one.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from deepfake.data import SPLITS, DatasetInfo

ORDER = {name: i for i, name in enumerate(SPLITS)}


@dataclass
class Leak:
    kind: str  # "exact" or "near"
    kept_split: str
    kept_path: str
    dup_split: str
    dup_path: str
    distance: int


def _hashes(path: str) -> tuple[str, object]:
    import imagehash
    from PIL import Image

    with open(path, "rb") as f:
        raw = f.read()
    with Image.open(path) as img:
        return hashlib.sha256(raw).hexdigest(), imagehash.phash(img.convert("RGB"))


def find_leaks(info: DatasetInfo, max_distance: int = 4) -> list[Leak]:
    """Pairs of images in *different* splits that are exact or near duplicates."""
    items = [(split, path) for split in SPLITS for path in info.splits[split].paths]
    group_of = {path: group for split in SPLITS
                for path, group in zip(info.splits[split].paths, info.splits[split].group_ids(), strict=True)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        hashes = list(pool.map(lambda item: _hashes(item[1]), items))
    leaks: list[Leak] = []
    seen_exact: dict[str, tuple[str, str]] = {}
    for (split, path), (digest, _) in zip(items, hashes, strict=True):
        if digest in seen_exact and seen_exact[digest][0] != split:
            first = seen_exact[digest]
            leaks.append(Leak("exact", first[0], first[1], split, path, 0))
        seen_exact.setdefault(digest, (split, path))
    exact_dups = {leak.dup_path for leak in leaks}
    if max_distance >= 0 and items:
        bits = np.array([h.hash.flatten() for _, h in hashes], dtype=bool)  # (N, 64)
        split_idx = np.array([ORDER[s] for s, _ in items])
        for i in range(len(items)):
            later = np.nonzero(split_idx > split_idx[i])[0]
            if later.size == 0:
                continue
            dist = (bits[later] != bits[i]).sum(axis=1)
            for j, d in zip(later[dist <= max_distance], dist[dist <= max_distance], strict=True):
                if items[j][1] in exact_dups or hashes[i][0] == hashes[j][0]:
                    continue
                leaks.append(Leak("near", items[i][0], items[i][1], items[j][0], items[j][1], int(d)))
    return _per_source(leaks, group_of)


def _per_source(leaks: list[Leak], group_of: dict[str, str]) -> list[Leak]:
    """One leak per pair of source files (the closest of their pictures), named by the sources."""
    best: dict[tuple[str, str], Leak] = {}
    for leak in leaks:
        a, b = group_of.get(leak.kept_path, leak.kept_path), group_of.get(leak.dup_path, leak.dup_path)
        named = Leak(leak.kind, leak.kept_split, a, leak.dup_split, b, leak.distance)
        if (a, b) not in best or leak.distance < best[(a, b)].distance:
            best[(a, b)] = named
    return list(best.values())


def dedupe(info: DatasetInfo, leaks: list[Leak]) -> DatasetInfo:
    """Remove each leak's copy from the later split (the earlier split keeps its image); every picture of that
    source (a video's frames) goes."""
    drop = {leak.dup_path for leak in leaks}
    for name in SPLITS:
        split = info.splits[name]
        info.splits[name] = split.subset([i for i, g in enumerate(split.group_ids()) if g not in drop])
    if drop:
        info.notes.append(f"dedupe: removed {len(drop)} duplicate image(s) from later splits")
    return info


def report(leaks: list[Leak], limit: int = 20) -> str:
    if not leaks:
        return "Leakage check: no exact or near-duplicate images across splits."
    exact = sum(leak.kind == "exact" for leak in leaks)
    lines = [f"Leakage check: {len(leaks)} duplicate pair(s) across splits ({exact} exact, {len(leaks) - exact} near)"]
    for leak in leaks[:limit]:
        lines.append(f"  {leak.kind:<5} d={leak.distance:<2} {leak.kept_split}:{leak.kept_path} ~ "
                     f"{leak.dup_split}:{leak.dup_path}")
    if len(leaks) > limit:
        lines.append(f"  ... and {len(leaks) - limit} more (see dataset/leakage.json)")
    return "\n".join(lines)
