"""Image-caption pairs from the Hugging Face hub for the gpu profile: Flickr30K by default, PMD (FLAVA §4, Table 1) as an option.

The default, ``lmms-lab/flickr30k`` (``DEFAULT_DATASET``), is not gated and stores its images in
parquet: columns ``image`` and ``caption`` (five captions per image; the first is taken), one split
``test`` of 31,783 images. PMD (``facebook/pmd``, 70M pairs) gathers COCO, SBU Captions, Localized Narratives, Conceptual
Captions (3M and 12M), Visual Genome, WIT, RedCaps and a filtered YFCC100M; each subset is a config
of the dataset. Its dataset card documents the rows as ``image`` (the image, or None where only a
link is stored), ``image_url``, ``text``, ``source`` and ``meta``; rows without a stored image are
fetched from ``image_url`` here. PMD is gated (accept its terms on the hub, then ``hf auth login``)
and ships a loading script, which ``datasets`` >= 4 does not run. Any other hub dataset with an image column and a caption column
reads the same way (e.g. a Flickr30K copy whose ``caption`` holds five captions: the first is taken).

* ``pairs_from_rows(rows, n, image_size)``: the conversion, a pure function over an iterable of row
  dicts (``{"image": PIL.Image, "text": str}`` and the variants above): the first ``n`` rows with an
  image and a caption, each image resized (shorter side to ``image_size``, bicubic, as CLIP and
  FLAVA's processor) and centre-cropped to a square ``uint8`` array.
* ``hub_pairs(dataset_id, configs, n, image_size, split=, image_column=, caption_column=)``: streams
  the configs (``n`` shared equally, shuffled in a buffer) through ``reproduce.hub`` and converts them.
  Offline, gated, script-based, a wrong split or a missing column: one-line ``reproduce.hub.HubError``
  at once (offline: ``HF_HUB_OFFLINE=1``, or no answer from the hub within ~1.5 s), naming the fix.

The result, ``ImageCaptionPairs``, holds what the generated scenes give the pretraining code:
``(N, S, S, 3)`` uint8 images and their captions. ``datasets`` is needed only here (extra ``gpu``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

PMD_DATASET = "facebook/pmd"
DEFAULT_DATASET = "lmms-lab/flickr30k"  # = reproduce.configs.flava.PAIRS_DATASET (tested)
IMAGE_FIELDS = ("image", "img", "jpg")  # first present column holds the image
TEXT_FIELDS = ("text", "caption", "captions", "sentences", "caption_0")  # first present column holds the caption
URL_FIELDS = ("image_url", "url")  # where an image that is not stored can be fetched (PMD)
OFFLINE_ALTERNATIVE = "use pairs_source='scenes' (profile=cpu), which generates captioned scenes offline"


@dataclass
class ImageCaptionPairs:
    """Paired data in the layout of ``reproduce.data.scenes.SceneSet``: images and their captions."""

    images: np.ndarray  # (N, S, S, 3) uint8
    captions: list[str]
    sources: list[str]  # the subset (config) each pair came from

    def __post_init__(self) -> None:
        if not (len(self.images) == len(self.captions) == len(self.sources)):
            raise ValueError(f"{len(self.images)} images, {len(self.captions)} captions, {len(self.sources)} sources")

    def __len__(self) -> int:
        return len(self.captions)


def square_image(image: Image.Image, size: int) -> np.ndarray:
    """RGB, shorter side resized to ``size`` (bicubic), centre crop: ``(size, size, 3)`` uint8."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _as_image(value) -> Image.Image | None:
    """A PIL image from what a row stores: a PIL image, encoded bytes, ``{"bytes": ...}``, or None."""
    if value is None or isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes")
        if value is None:
            return None
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
        image.load()
        return image
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


def _as_caption(value) -> str | None:
    """The caption of a row: a string, or the first non-empty one of a list (of strings or ``{"raw": str}``)."""
    if isinstance(value, str):
        return " ".join(value.split()) or None
    if isinstance(value, (list, tuple)):
        for item in value:
            text = _as_caption(item["raw"] if isinstance(item, dict) and "raw" in item else item)
            if text:
                return text
    return None


def _field(row: dict, candidates: tuple[str, ...], what: str, given: str | None, required: bool = True) -> str | None:
    if given is not None:
        if given not in row:
            raise KeyError(f"rows have no {what} column {given!r}; their columns: {sorted(row)}")
        return given
    name = next((c for c in candidates if c in row), None)
    if name is None and required:
        raise KeyError(f"rows have no {what} column (looked for {list(candidates)}); their columns: {sorted(row)}")
    return name


def pairs_from_rows(rows: Iterable[dict], n: int, image_size: int, *, source: str = "",
                    image_field: str | None = None, text_field: str | None = None,
                    fetch_url: Callable[[str], bytes | None] | None = None) -> ImageCaptionPairs:
    """The first ``n`` rows that have an image and a caption, as ``ImageCaptionPairs``.

    Columns are found by name (``IMAGE_FIELDS``, ``TEXT_FIELDS``) unless given. A row whose image is
    None is fetched with ``fetch_url(row[url column])`` when given, else skipped; rows without a
    caption or with an unreadable image are skipped. Returns fewer than ``n`` pairs only when the rows run out.
    """
    if n < 1 or image_size < 1:
        raise ValueError(f"need n >= 1 and image_size >= 1, got n={n}, image_size={image_size}")
    images, captions = [], []
    columns: tuple[str, str, str | None] | None = None
    for row in rows:
        if columns is None:
            columns = (_field(row, IMAGE_FIELDS, "image", image_field), _field(row, TEXT_FIELDS, "caption", text_field),
                       _field(row, URL_FIELDS, "image URL", None, required=False))
        img_col, text_col, url_col = columns
        caption = _as_caption(row.get(text_col))
        if caption is None:
            continue
        value = row.get(img_col)
        if value is None and fetch_url is not None and url_col and row.get(url_col):
            value = fetch_url(row[url_col])
        try:
            image = _as_image(value)
        except (OSError, ValueError):  # a truncated or undecodable file: skip the row, as PMD's own loader does
            continue
        if image is None:
            continue
        images.append(square_image(image, image_size))
        captions.append(caption)
        if len(captions) == n:
            break
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return ImageCaptionPairs(stacked, captions, [source] * len(captions))


def fetch_image_bytes(url: str, timeout: float = 10.0) -> bytes | None:
    """The bytes at ``url``, or None on any network error (dead links are common in web-scale PMD subsets)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"user-agent": "reproduce-flava/0.1 (datasets)"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, TimeoutError, ValueError):
        return None


def _prefetched(rows: Iterable[dict], url_field: str, threads: int, chunk: int = 256) -> Iterator[dict]:
    """Rows with their missing images fetched from ``url_field``, ``threads`` downloads at a time."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == chunk:
                yield from _fill(batch, url_field, pool)
                batch = []
        yield from _fill(batch, url_field, pool)


def _fill(batch: list[dict], url_field: str, pool: ThreadPoolExecutor) -> list[dict]:
    todo = [row for row in batch if row.get("image") is None and row.get(url_field)]
    for row, data in zip(todo, pool.map(fetch_image_bytes, [row[url_field] for row in todo])):
        row["image"] = data
    return batch


def hub_pairs(dataset_id: str, configs: list[str], n: int, image_size: int, *, split: str = "test",
              image_column: str | None = "image", caption_column: str | None = "caption", seed: int = 0,
              shuffle_buffer: int = 10_000, fetch_threads: int = 16, param: str = "pairs_dataset") -> ImageCaptionPairs:
    """``n`` image-caption pairs streamed from ``configs`` of a hub dataset (or a local parquet folder),
    ``n`` shared equally, shuffled in a buffer of ``shuffle_buffer`` rows, each converted as it arrives
    (only the ``(n, S, S, 3)`` uint8 result is kept: 30k pairs at 224 px = 4.5 GB).

    Read through ``reproduce.hub.load_dataset``: offline, gated (PMD: accept its terms on the hub and
    ``hf auth login``), script-based, a wrong split or config, or a missing column each fail at once
    with one line naming ``param`` and the fix (``reproduce.hub.HubError``). ``[]`` reads the default config.
    A caption column holding a list (Flickr30K's five captions) gives its first caption: one pair per image.
    """
    from tqdm.auto import tqdm

    from reproduce import hub

    names: list[str | None] = list(configs) or [None]
    shares = [n // len(names) + (i < n % len(names)) for i in range(len(names))]
    parts = []
    for config, share in zip(names, shares):
        if share == 0:
            continue
        name = f"{dataset_id}" + (f" ({config})" if config else "")
        stream = hub.load_dataset(dataset_id, config, split, streaming=True, param=param, alternative=OFFLINE_ALTERNATIVE)
        first = next(iter(stream), None)
        if first is None:
            raise hub.HubError(f"dataset {name!r}, split {split!r} is empty; set {param}", "missing")
        hub.require_columns(first, [c for c in (image_column, caption_column) if c], dataset_id,
                            "pairs_image_column / pairs_caption_column")
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
        columns = set(getattr(stream, "column_names", None) or first)
        url_field = next((c for c in URL_FIELDS if c in columns), None)
        rows = _prefetched(stream, url_field, fetch_threads) if url_field else stream
        rows = tqdm(rows, desc=f"pairs from {name}", unit=" rows", total=share)
        part = pairs_from_rows(rows, share, image_size, source=config or dataset_id, image_field=image_column,
                               text_field=caption_column)
        if len(part) < share:
            raise ValueError(f"{name} gave {len(part)} usable pairs, fewer than the {share} asked for; lower n_pairs "
                             "or add configs (pairs_configs)")
        parts.append(part)
    return ImageCaptionPairs(np.concatenate([p.images for p in parts]), [c for p in parts for c in p.captions],
                             [s for p in parts for s in p.sources])
