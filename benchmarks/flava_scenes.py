"""Scene generation (``reproduce.data.scenes.make_scenes``) vs the per-image background it replaced.

``make_scenes`` textures the five backgrounds once per noise tile (``textured_backgrounds``) and
crops each image's background from them. The reference below is the former way: add the background
colour to the tile crop, clip and convert for every image. Both consume the random generator in the
same order, and the images are checked identical before timing. Prints seconds per call (best of
``--repeats``) and the ratio ours / reference, measured in this run, on one thread.

    python benchmarks/flava_scenes.py [--n 5000 --size 64 --repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageDraw

from reproduce.data import scenes


def reference_render(scene: scenes.Scene, size: int, rng: np.random.Generator, tile: np.ndarray) -> np.ndarray:
    """The former ``render``: the background computed per image from the tile crop (shapes only)."""
    base = np.asarray(scenes.BACKGROUNDS[scene.background], dtype=np.float32)
    y, x = rng.integers(size, size=2)
    img = Image.fromarray(np.clip(base + tile[y : y + size, x : x + size], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for obj, (cx, cy) in zip(scene.objects, scenes._centres(scene, size, rng)):
        r = scenes.SIZES[obj.size] * size
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=scenes.COLOURS[obj.colour])
        else:
            draw.polygon(scenes._polygon(obj.shape, cx, cy, r), fill=scenes.COLOURS[obj.colour])
    return np.asarray(img)


def reference_make_scenes(n: int, size: int, seed: int) -> scenes.SceneSet:
    sampler = scenes.SceneSampler()
    rng = np.random.default_rng(seed)
    drawn = [sampler.sample(rng) for _ in range(n)]
    tile = scenes.texture_tile(size, rng)
    images = np.stack([reference_render(s, size, rng, tile) for s in drawn])  # (N, S, S, 3)
    negatives = [sampler.negative(s, rng).caption() for s in drawn]
    return scenes.SceneSet(images, [s.caption() for s in drawn], negatives, drawn)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ours, ref = scenes.make_scenes(args.n, args.size, 0), reference_make_scenes(args.n, args.size, 0)
    assert np.array_equal(ours.images, ref.images) and ours.captions == ref.captions and ours.negatives == ref.negatives
    t_ours = _best(lambda: scenes.make_scenes(args.n, args.size, 0), args.repeats)
    t_ref = _best(lambda: reference_make_scenes(args.n, args.size, 0), args.repeats)
    print(f"make_scenes({args.n}, {args.size}): ours {t_ours:.3f} s, reference {t_ref:.3f} s, "
          f"ours / reference = {t_ours / t_ref:.2f} (identical images and captions)")


if __name__ == "__main__":
    main()
