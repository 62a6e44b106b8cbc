"""FLAVA evaluation (Table 4's three domains, small stand-ins for its 35 tasks).

* vision (paper: 22 linear probes): logistic-regression probes on frozen h_CLS,I (CLIP protocol);
* language (paper: 8 GLUE tasks, fine-tuned): probes on frozen h_CLS,T;
* multimodal (paper: VQAv2, SNLI-VE, Hateful Memes, zero-shot Flickr30K/COCO retrieval): zero-shot
  image<->text retrieval R@1/R@5 on the GC embeddings, and a probe on frozen h_CLS,M.

Domain average = mean of its tasks in %, macro average = mean of the three domains, a domain a row
does not report counting 0 (as the paper's MIM and MLM rows).

Deviation: probes instead of fine-tuning (the paper fine-tunes GLUE and the VQA-style tasks); the
probe's regularisation is swept on a validation split as in CLIP's protocol but over 5 values.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from reproduce.flava import model as M
from reproduce.flava.data import EvalData, to_pixels

DOMAINS = ("vision", "language", "multimodal")


# ---------------------------------------------------------------------------------------------------
# Features of the frozen encoders
# ---------------------------------------------------------------------------------------------------
def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def image_features(model, images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """h_CLS,I: token 0 of the image encoder's final layer, ``(N, D)``."""
    dev = _device(model)
    return torch.cat([model.flava(pixel_values=to_pixels(images[i : i + chunk]).to(dev)).image_embeddings[:, 0].cpu()
                      for i in range(0, len(images), chunk)]).numpy()


@torch.no_grad()
def text_features(model, ids: Tensor, mask: Tensor, chunk: int = 512) -> np.ndarray:
    """h_CLS,T, ``(N, D)``."""
    dev = _device(model)
    return torch.cat([model.flava(input_ids=ids[i : i + chunk].to(dev), attention_mask=mask[i : i + chunk].to(dev)
                                  ).text_embeddings[:, 0].cpu() for i in range(0, len(ids), chunk)]).numpy()


@torch.no_grad()
def multimodal_features(model, images: np.ndarray, ids: Tensor, mask: Tensor, chunk: int = 256) -> np.ndarray:
    """h_CLS,M of the unmasked pair, ``(N, D)``."""
    dev, out = _device(model), []
    for i in range(0, len(ids), chunk):
        o = model.flava(pixel_values=to_pixels(images[i : i + chunk]).to(dev), input_ids=ids[i : i + chunk].to(dev),
                        attention_mask=mask[i : i + chunk].to(dev))
        out.append(o.multimodal_embeddings[:, 0].cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def contrastive_embeddings(model, images: np.ndarray | Tensor, ids: Tensor, mask: Tensor, chunk: int = 256
                           ) -> tuple[Tensor, Tensor]:
    """The GC embeddings (projected, L2-normalised h_CLS), ``(N, E)`` each: what zero-shot retrieval uses.

    ``images``: uint8 ``(N, S, S, 3)`` (our models), or pixel values ``(N, 3, S, S)`` already
    prepared by an image processor (the released model).
    """
    dev, img, txt = _device(model), [], []
    pixels = images if isinstance(images, Tensor) else None
    for i in range(0, len(ids), chunk):
        px = pixels[i : i + chunk] if pixels is not None else to_pixels(images[i : i + chunk])
        o = model.flava(pixel_values=px.to(dev), input_ids=ids[i : i + chunk].to(dev),
                        attention_mask=mask[i : i + chunk].to(dev), skip_multimodal_encoder=True)
        a, b = M.contrastive_embeddings(model, o.image_embeddings, o.text_embeddings)
        img.append(a.cpu())
        txt.append(b.cpu())
    return torch.cat(img), torch.cat(txt)


# ---------------------------------------------------------------------------------------------------
# Probes and retrieval
# ---------------------------------------------------------------------------------------------------
def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0,
                 cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> float:
    """CLIP-protocol linear probe: L-BFGS logistic regression, C swept on a validation split; accuracy in %."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), warnings.catch_warnings():  # one thread: OpenMP spinning on shared cores is far slower
        warnings.simplefilter("ignore", ConvergenceWarning)  # a weak C that stops at max_iter loses the sweep anyway
        scaler = StandardScaler().fit(train_x)
        xtr, xte = scaler.transform(train_x), scaler.transform(test_x)
        perm = np.random.default_rng(seed).permutation(len(xtr))
        val, fit = perm[: len(perm) // 5], perm[len(perm) // 5 :]
        best = max(cs, key=lambda c: LogisticRegression(C=c, max_iter=1000).fit(xtr[fit], train_y[fit]).score(xtr[val], train_y[val]))
        return 100.0 * LogisticRegression(C=best, max_iter=1000).fit(xtr, train_y).score(xte, test_y)


def retrieval_recalls(image_emb: Tensor, text_emb: Tensor, captions: list[str], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Zero-shot TR/IR R@k (%). A hit is any retrieved item whose caption equals the query's (captions repeat)."""
    sim = image_emb @ text_emb.T  # (R, R)
    _, cap_id = np.unique(np.asarray(captions), return_inverse=True)
    cap_id = torch.from_numpy(cap_id)
    out = {}
    for k in ks:
        top_text = sim.topk(k, dim=1).indices  # (R, k) texts per image
        top_image = sim.topk(k, dim=0).indices.T  # (R, k) images per text
        out[f"TR R@{k}"] = 100.0 * (cap_id[top_text] == cap_id[:, None]).any(1).float().mean().item()
        out[f"IR R@{k}"] = 100.0 * (cap_id[top_image] == cap_id[:, None]).any(1).float().mean().item()
    return out


def evaluate(model, row: M.AblationRow, ev: EvalData, seed: int = 0) -> dict[str, dict[str, float]]:
    """Scores (%) per domain and task for the domains the row reports; ``"average"`` per domain."""
    model.eval()
    scores: dict[str, dict[str, float]] = {}
    if "vision" in row.domains:
        scores["vision"] = {name: linear_probe(image_features(model, t.train[0]), t.train_y,
                                               image_features(model, t.test[0]), t.test_y, seed) for name, t in ev.vision.items()}
    if "language" in row.domains:
        scores["language"] = {name: linear_probe(text_features(model, *t.train), t.train_y,
                                                 text_features(model, *t.test), t.test_y, seed) for name, t in ev.language.items()}
    if "multimodal" in row.domains:
        img, txt = contrastive_embeddings(model, ev.retrieval_images, ev.retrieval_ids, ev.retrieval_mask)
        mm = retrieval_recalls(img, txt, ev.retrieval_captions)
        t = ev.entailment
        mm["entailment"] = linear_probe(multimodal_features(model, *t.train), t.train_y, multimodal_features(model, *t.test), t.test_y, seed)
        scores["multimodal"] = mm
    for domain in scores.values():
        domain["average"] = float(np.mean(list(domain.values())))
    return scores


def macro_average(scores: dict[str, dict[str, float]]) -> float:
    """Mean of the three domain averages, a missing domain counting 0 (Table 3)."""
    return sum(scores.get(d, {}).get("average", 0.0) for d in DOMAINS) / 3


# ---------------------------------------------------------------------------------------------------
# What the retrieval figures show
# ---------------------------------------------------------------------------------------------------
def png_base64(image: np.ndarray) -> str:
    """An ``(S, S, 3)`` uint8 image as base64 PNG text: figures read it back from the results file."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@torch.no_grad()
def similarity_matrix(model, ev: EvalData, n: int = 8) -> list[list[float]]:
    """Cosine similarities of the first ``n`` held-out pairs' GC embeddings, ``(n, n)``."""
    img, txt = contrastive_embeddings(model, ev.retrieval_images[:n], ev.retrieval_ids[:n], ev.retrieval_mask[:n])
    return (img @ txt.T).tolist()


@torch.no_grad()
def retrieval_examples(model, ev: EvalData, queries: int = 4, top: int = 3, seed: int = 0) -> list[dict]:
    """A few query captions with their top retrieved held-out images (zero-shot, GC embeddings)."""
    img, txt = contrastive_embeddings(model, ev.retrieval_images, ev.retrieval_ids, ev.retrieval_mask)
    rng = np.random.default_rng(seed)
    out = []
    for q in rng.choice(len(ev.retrieval_captions), queries, replace=False):
        sims = img @ txt[q]  # (R,)
        best = sims.topk(top).indices.tolist()
        out.append({"caption": ev.retrieval_captions[q], "images": [png_base64(ev.retrieval_images[i]) for i in best],
                    "captions": [ev.retrieval_captions[i] for i in best],
                    "hits": [ev.retrieval_captions[i] == ev.retrieval_captions[q] for i in best]})
    return out
