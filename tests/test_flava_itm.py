"""Issue #28, ITM ladder rung 0: FLAVA's ITM head can overfit one fixed batch through the project's own
model (``reproduce.flava.model.build_model``) and loss code (``reproduce.flava.objectives.losses``, the
function the training step calls), with the project's optimizer (``pretraining.optimizer``) and the
loop's gradient clip (1.0). Loss far below ln 2 and 100 % accuracy on the batch rule out a wiring bug:
wrong labels, the wrong token pooled, the ITM logits detached, no gradient reaching the head or the
fusion encoder, an attention mask that hides everything.

Two batches: (1) the paired batch exactly as ``BatchSampler.paired`` draws it for training (masked
image and text, sampled negatives); (2) an unmasked batch built so that neither modality alone can
solve it: every image appears once matched and once unmatched, and so does every caption, so only a
function of the pair (the multimodal encoder) reaches 100 %. Tiny sizes, one thread, seconds each.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from reproduce.data import scenes
from reproduce.flava import data as D
from reproduce.flava import model as M
from reproduce.flava import objectives as O
from reproduce.flava import pretraining as P

TINY = M.FlavaSizes(image_size=32, patch_size=8, hidden=32, heads=2, mlp=64, image_layers=1, text_layers=1,
                    multimodal_layers=1, projection_dim=16, codebook_size=16, vocab_size=200, max_text_len=20)
SEED = 101  # disjoint from the record's seeds (0, 1, 2)
STEPS = 300
LN2 = math.log(2.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    captions = scenes.make_scenes(200, 32, SEED).captions
    texts = D.TextSources(pretrain=[f"{c} and then the words went on." for c in captions], austen_heldout=[], melville_heldout=[])
    return D.build_pretrain_data(TINY, n_pairs=96, n_images=64, n_text=64, emoji_prob=0.0, seed=SEED, texts=texts)


def _itm_logits(model, batch: O.PairedBatch) -> torch.Tensor:
    """The ITM head on the same multimodal pass ``paired_losses`` scores (masked text and image)."""
    out = model.flava(input_ids=batch.itm_ids_masked, attention_mask=batch.itm_attention_mask,
                      pixel_values=batch.pixel_values, bool_masked_pos=batch.bool_masked_pos)
    return model.itm_head(out.multimodal_embeddings)


def _overfit(batch: O.PairedBatch, steps: int = STEPS, lr: float = 1e-3) -> tuple[float, float, list[float]]:
    """Train a fresh tiny FLAVA on ``batch`` with ITM only; returns (final loss, accuracy, loss history)."""
    model = M.build_model(TINY, SEED).train()
    opt = P.optimizer(model, P.FlavaTrainConfig(steps=steps, batch_size=batch.itm_labels.shape[0], lr=lr, warmup=0))
    history = []
    for _ in range(steps):
        loss = O.losses(model, batch, O.Objectives(itm=True), itm_negatives="sampled").total()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # reproduce.train's default max_grad_norm
        opt.step()
        history.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        final = float(O.losses(model, batch, O.Objectives(itm=True), itm_negatives="sampled").itm)
        acc = float((_itm_logits(model, batch).argmax(-1) == batch.itm_labels).float().mean())
    return final, acc, history


def test_itm_overfits_one_sampled_training_batch(data):
    """The paired batch as training draws it (block-masked image, BERT-masked text, half negatives, half
    of those one-attribute swaps) is memorised: loss far below ln 2, every pair right."""
    batch = D.BatchSampler(data, TINY, batch_size=16, seed=SEED, itm_negative_prob=0.5, itm_hard_fraction=0.5).paired()
    labels = batch.itm_labels
    assert 0 < int(labels.sum()) < len(labels)  # both classes present
    final, acc, history = _overfit(batch)
    assert abs(history[0] - LN2) < 0.05  # starts at chance
    assert final < 0.1 and acc == 1.0, (final, acc, history[::25])


def _crossed_batch(data, n: int = 8) -> O.PairedBatch:
    """Unmasked pairs (image i, caption i, matched) and (image i, caption i+1, unmatched) for n distinct
    captions: each image and each caption is once matched and once unmatched, so a classifier that
    reads one modality only is at 50 %; nothing masked (the rung "ITM on the unmasked pair")."""
    captions = data.captions
    idx, seen = [], set()
    for i, c in enumerate(captions):
        if c not in seen:
            seen.add(c)
            idx.append(i)
        if len(idx) == n:
            break
    idx = torch.tensor(idx)
    other = idx.roll(-1)
    image = torch.cat([idx, idx])
    text = torch.cat([idx, other])
    ids, mask = data.caption_ids[text], data.caption_mask[text]
    p = data.paired_tokens.shape[1]
    return O.PairedBatch(pixel_values=D.to_pixels(data.paired_images[image.numpy()]), input_ids=ids, attention_mask=mask,
                         image_tokens=data.paired_tokens[image], bool_masked_pos=torch.zeros(2 * n, p, dtype=torch.bool),
                         itm_ids_masked=ids, itm_attention_mask=mask, mlm_labels=torch.full_like(ids, O.CE_IGNORE),
                         itm_labels=torch.cat([torch.ones(n), torch.zeros(n)]).long())


def test_itm_overfits_a_batch_that_only_the_fused_pair_can_solve(data):
    batch = _crossed_batch(data)
    pairs = torch.cat([batch.pixel_values.flatten(1), batch.itm_ids_masked.float()], 1)
    assert len({tuple(r) for r in pairs.tolist()}) == len(batch.itm_labels)  # every pair distinct
    final, acc, history = _overfit(batch)
    assert final < 0.1 and acc == 1.0, (final, acc, history[::25])


def test_itm_gradient_reaches_the_head_and_the_fusion_encoder(data):
    """One backward of the ITM loss: non-zero gradients on the ITM head, the multimodal encoder and its
    [CLS_M], the projections into it, and both unimodal encoders (nothing detached on the way)."""
    batch = _crossed_batch(data)
    model = M.build_model(TINY, SEED).train()
    O.losses(model, batch, O.Objectives(itm=True)).total().backward()
    f = model.flava
    parts = {"itm_head": model.itm_head, "multimodal_model": f.multimodal_model, "image_to_mm": f.image_to_mm_projection,
             "text_to_mm": f.text_to_mm_projection, "image_model": f.image_model, "text_model": f.text_model}
    for name, module in parts.items():
        norm = sum(float(p.grad.norm()) for p in module.parameters() if p.grad is not None)
        assert norm > 0, name
    assert float(f.multimodal_model.cls_token.grad.norm()) > 0


# ---------------------------------------------------------------------------------------------------
# The options that made ITM learn (calibration/flava/itm_ladder.md, rung r): itm_pair and multimodal_lr
# ---------------------------------------------------------------------------------------------------
def test_unmasked_itm_reads_the_unmasked_pair_in_both_forms(data):
    """ITM on the unmasked pair: with sampled negatives one more forward of the restored texts; with mined
    negatives GC's own states re-paired (``multimodal_encode``). Both equal the ITM head on a plain
    forward of the unmasked image and text (exact up to float32 round-off), and differ from the masked pass."""
    sampler = D.BatchSampler(data, TINY, batch_size=8, seed=SEED, itm_negative_prob=0.5, itm_hard_fraction=0.5)
    batch = sampler.paired()
    assert (batch.itm_ids_masked != O.unmasked_itm_ids(batch)).any()  # something was masked
    model = M.build_model(TINY, SEED).eval()
    with torch.no_grad():
        plain = model.flava(input_ids=O.unmasked_itm_ids(batch), attention_mask=batch.itm_attention_mask,
                            pixel_values=batch.pixel_values)
        want = torch.nn.functional.cross_entropy(model.itm_head(plain.multimodal_embeddings), batch.itm_labels)
        got = O.losses(model, batch, O.Objectives(itm=True), itm_pair="unmasked").itm
        masked = O.losses(model, batch, O.Objectives(itm=True), itm_pair="masked").itm
        assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(masked, want, atol=1e-4)
        matched = D.BatchSampler(data, TINY, batch_size=8, seed=SEED, itm_negative_prob=0.0).paired()
        states = model.flava(input_ids=matched.input_ids, attention_mask=matched.attention_mask,
                             pixel_values=matched.pixel_values)
        direct = O.multimodal_encode(model, states.image_output.hidden_states[-1], states.text_output.hidden_states[-1],
                                     matched.attention_mask)
        assert torch.allclose(direct, states.multimodal_embeddings, atol=1e-5)
        # mined + unmasked never reads the masked pass: hiding every token and patch changes nothing
        hidden = replace(matched, itm_ids_masked=torch.full_like(matched.itm_ids_masked, data.tokenizer.mask_token_id),
                         bool_masked_pos=torch.ones_like(matched.bool_masked_pos))
        both = O.Objectives(gc=True, itm=True)

        def mined(b, pair):
            return O.losses(model, b, both, itm_negatives="mined", generator=torch.Generator().manual_seed(0), itm_pair=pair).itm

        assert torch.equal(mined(matched, "unmasked"), mined(hidden, "unmasked"))
        assert not torch.equal(mined(matched, "masked"), mined(hidden, "masked"))
    with pytest.raises(ValueError, match="itm_pair"):
        O.losses(model, batch, O.Objectives(itm=True), itm_pair="half")


def test_multimodal_lr_moves_exactly_the_fusion_parts_to_their_own_rate():
    model = M.build_model(TINY, SEED)
    cfg = P.FlavaTrainConfig(steps=10, batch_size=8, warmup=1, lr=1e-3, multimodal_lr=1e-4)
    rate = {id(p): g["lr"] for g in P.optimizer(model, cfg).param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        fusion = name.startswith(tuple(part + "." for part in P.MULTIMODAL_PARTS))
        assert rate[id(p)] == (1e-4 if fusion else 1e-3), name
    assert any(n.startswith("flava.multimodal_model.") for n, _ in model.named_parameters())
    one = P.optimizer(model, P.FlavaTrainConfig(steps=10, batch_size=8, warmup=1, lr=1e-3))
    assert {g["lr"] for g in one.param_groups} == {1e-3}  # 0: the paper's one rate
    with pytest.raises(ValueError, match="multimodal_lr"):
        P.FlavaTrainConfig(steps=10, batch_size=8, warmup=1, multimodal_lr=-1.0)
