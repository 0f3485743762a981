"""Near duplicates: perceptual hashes (pHash; Zauner 2010), pairs within a Hamming distance, and the
pixel check that confirms them on the decoded cache (the audit's near-duplicate finding)."""

from __future__ import annotations

import numpy as np

from xai_lab.config import AuditConfig


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``D`` (``D @ x`` is the DCT of ``x``)."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(images: np.ndarray, batch: int = 4096) -> np.ndarray:
    """64-bit perceptual hashes of uint8 images ``[N, C, H, W]`` as uint64 ``[N]``."""
    import torch
    import torch.nn.functional as F

    d = dct_matrix(32).astype(np.float32)
    out = np.empty(len(images), dtype=np.uint64)
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.asarray(images[start : start + batch], dtype=np.float32)).mean(
            dim=1, keepdim=True
        )
        small = F.interpolate(x, size=(32, 32), mode="area")[:, 0].numpy()
        low = (d @ small @ d.T)[:, :8, :8].reshape(len(small), 64)
        bits = low > np.median(low, axis=1, keepdims=True)
        out[start : start + batch] = np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)
    return out


def near_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 256) -> np.ndarray:
    """All pairs ``(i, j)``, ``i < j``, of hashes at most ``max_distance`` bits apart: int64 ``[P, 2]``."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = j > i
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def pixel_difference(images: np.ndarray, pairs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mean absolute difference (gray levels) between the two images of each pair."""
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), chunk):
        p = pairs[start : start + chunk]
        a, b = np.asarray(images[p[:, 0]], np.float32), np.asarray(images[p[:, 1]], np.float32)
        out[start : start + chunk] = np.abs(a - b).reshape(len(p), -1).mean(axis=1)
    return out


def confirmed_near_pairs(images: np.ndarray, sha1: np.ndarray, cfg: AuditConfig) -> tuple[np.ndarray, np.ndarray]:
    """The pHashes and the near-duplicate pairs: close hashes, different bytes, small mean gray difference."""
    n = len(sha1)
    hashes = phash(images) if n else np.empty(0, dtype=np.uint64)
    pairs = near_pairs(hashes, cfg.near_duplicate_distance) if n > 1 else np.empty((0, 2), dtype=np.int64)
    if len(pairs):
        pairs = pairs[sha1[pairs[:, 0]] != sha1[pairs[:, 1]]]
        pairs = pairs[pixel_difference(images, pairs) <= cfg.near_duplicate_pixel_delta]
    return hashes, pairs
