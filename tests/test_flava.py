"""Tests of reproduce/flava and reproduce/data/scenes: masking, the five losses against Hugging Face's
FlavaForPreTraining, the global contrastive loss (naive and across 2 gloo processes), the ablation
switches, the scene generator, and bad inputs. Tiny configs: everything runs in well under a minute."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import KeptRows, run_ranks
from reproduce.data import scenes
from reproduce.flava import ablation as A
from reproduce.flava import data as D
from reproduce.flava import evaluation as V
from reproduce.flava import experiments as E
from reproduce.flava import model as M
from reproduce.flava import objectives as O
from reproduce.flava import pretraining as P
from reproduce.flava import sections as S
from reproduce.flava import tokenisers as T
from reproduce.flava.masking import BlockMasking, mask_text

TINY = M.FlavaSizes(image_size=32, patch_size=8, hidden=32, heads=2, mlp=64, image_layers=1, text_layers=1,
                    multimodal_layers=1, projection_dim=16, codebook_size=16, vocab_size=200, max_text_len=20)


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    captions = scenes.make_scenes(200, 32, 5).captions
    texts = D.TextSources(pretrain=[f"{c} and then the words went on." for c in captions], austen_heldout=[], melville_heldout=[])
    return D.build_pretrain_data(TINY, n_pairs=96, n_images=64, n_text=64, emoji_prob=0.0, seed=0, texts=texts)


@pytest.fixture(scope="module")
def sampler(data):
    return D.BatchSampler(data, TINY, batch_size=8, seed=0)


# ------------------------------------------------------------------------------------------- masking
def test_block_masking_fraction_matches_beit_budget():
    masking = BlockMasking(grid=8)  # 64 patches: 38% -> 24 masked, groups >= 5 patches
    random.seed(0)
    counts = masking(500).sum(1).float()
    assert masking.total == round(64 * 75 / 196) and masking.min_group == round(64 * 16 / 196)
    assert counts.max() <= masking.total
    assert abs(counts.mean().item() / 64 - 75 / 196) < 0.02  # BEiT's generator may stop a block short


@pytest.mark.parametrize("area, side", [(9, 3), (16, 4)])
def test_block_masking_draws_blocks_of_the_configured_area_and_aspect(area, side):
    """With aspect fixed to 1 and the budget equal to one block, every mask is one side x side square."""
    masking = BlockMasking(grid=8, ratio=area / 64, min_group_fraction=area / 64, min_aspect=1.0)
    random.seed(1)
    for mask in masking(100).view(-1, 8, 8):
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert len(rows) == len(cols) == side
        assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all() and mask.sum() == area


def test_block_masking_blocks_are_at_least_min_group_until_the_budget_is_nearly_spent():
    masking = BlockMasking(grid=8, ratio=0.5, min_group_fraction=0.25, min_aspect=0.3)  # 32 masked, blocks >= 16
    random.seed(2)
    counts = masking(200).sum(1)
    assert counts.max() <= 32 and counts.float().mean() > 16  # at least one full block, never over budget


def test_text_masking_is_fifteen_percent_of_non_special_tokens(data):
    ids = data.text_ids.repeat(40, 1)  # (2560, L)
    masked, labels = mask_text(ids, data.tokenizer, generator=torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(data.tokenizer.all_special_ids))
    n = (~special).sum().item()
    frac = labels.ne(O.CE_IGNORE).sum().item() / n
    assert abs(frac - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    assert labels[special].eq(O.CE_IGNORE).all()  # [CLS], [SEP], [PAD] are never predicted
    chosen = labels.ne(O.CE_IGNORE)
    mask_id = data.tokenizer.mask_token_id
    assert abs(masked[chosen].eq(mask_id).float().mean().item() - 0.8) < 0.05  # BERT's 80% [MASK]
    assert torch.equal(labels[chosen], ids[chosen])


# ------------------------------------------------------------------------------------ contrastive
def naive_contrastive(image: torch.Tensor, text: torch.Tensor, logit_scale: float) -> float:
    """CLIP's loss written out row by row, in float64."""
    s = math.exp(logit_scale)
    n = len(image)
    total = 0.0
    for i in range(n):
        row_i = [s * float(image[i] @ text[j]) for j in range(n)]
        row_t = [s * float(text[i] @ image[j]) for j in range(n)]
        total += -row_i[i] + math.log(sum(math.exp(v) for v in row_i))
        total += -row_t[i] + math.log(sum(math.exp(v) for v in row_t))
    return total / (2 * n)


def test_contrastive_loss_equals_naive_computation():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=-1)
    ours = O.global_contrastive_loss(image, text, torch.tensor(2.6592, dtype=torch.float64))
    assert ours.item() == pytest.approx(naive_contrastive(image, text, 2.6592), abs=1e-12)


def _gathered_worker(rank: int, world: int, port: int, image: torch.Tensor, text: torch.Tensor, weight: torch.Tensor, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        b = len(image) // world
        w = weight.clone().requires_grad_(True)  # a shared "encoder": the gradient must reach every rank's rows
        local = slice(rank * b, (rank + 1) * b)
        img = F.normalize(image[local] @ w, dim=-1)
        txt = F.normalize(text[local] @ w, dim=-1)
        loss = O.global_contrastive_loss(img, txt, torch.tensor(2.0, dtype=torch.float64))
        loss.backward()
        dist.all_reduce(w.grad)  # what DDP does (sum here, divided below = DDP's average)
        queue.put((rank, loss.item(), (w.grad / world).numpy()))
        dist.barrier()  # neither rank tears gloo down while the other still talks to it (a SIGABRT seen once)
    finally:
        dist.destroy_process_group()


def test_gathered_contrastive_loss_on_two_processes_equals_one_process_on_the_concatenated_batch():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64)
    w = weight.clone().requires_grad_(True)
    single = O.global_contrastive_loss(F.normalize(image @ w, dim=-1), F.normalize(text @ w, dim=-1), torch.tensor(2.0, dtype=torch.float64))
    single.backward()

    results = run_ranks(_gathered_worker, lambda r, port, queue: (r, 2, port, image, text, weight, queue))
    mean_loss = sum(loss for _, loss, _ in results) / 2  # DDP averages the per-process losses' gradients
    assert mean_loss == pytest.approx(single.item(), abs=1e-12)
    for _, _, grad in results:
        np.testing.assert_allclose(grad, w.grad.numpy(), atol=1e-12)


def test_local_only_contrastive_differs_from_global_when_gradients_do_not_cross():
    """Sanity of the test above: without the gather the loss is per-process, and it differs."""
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(2.0, dtype=torch.float64)
    halves = (O.global_contrastive_loss(image[:4], text[:4], scale) + O.global_contrastive_loss(image[4:], text[4:], scale)) / 2
    assert abs(halves.item() - O.global_contrastive_loss(image, text, scale).item()) > 1e-3


# ------------------------------------------------------------------- losses vs Hugging Face's forward
def _no_negatives(batch: O.PairedBatch) -> O.PairedBatch:
    """The same batch with every ITM text taken as the pair's caption (all labels 1), as HF reads it."""
    ids = batch.itm_ids_masked.where(batch.mlm_labels.eq(O.CE_IGNORE), batch.mlm_labels)  # unmasked ITM text
    return O.PairedBatch(batch.pixel_values, ids, batch.itm_attention_mask, batch.image_tokens, batch.bool_masked_pos,
                         batch.itm_ids_masked, batch.itm_attention_mask, batch.mlm_labels, torch.ones_like(batch.itm_labels))


def test_our_losses_equal_hf_flava_for_pretraining_on_batches_without_negatives(sampler):
    model = M.build_model(TINY, seed=0).train()
    everything = O.Objectives(mim=True, mlm=True, gc=True, mmm=True, itm=True)
    for batch in (_no_negatives(sampler.paired()), sampler.images(), sampler.text()):
        ours = dict(O.losses(model, batch, everything, gather=False).items())
        theirs = O.hf_pretraining_losses(model, batch)
        assert set(ours) == set(theirs) and ours
        for name in ours:
            assert ours[name].item() == pytest.approx(theirs[name].item(), abs=1e-5), name


def test_one_hf_flava_for_pretraining_step_on_our_batches_yields_all_six_losses(sampler):
    model = M.build_model(TINY, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.flava.text_projection.weight.detach().clone()
    seen = {}
    for batch in (sampler.paired(), sampler.images(), sampler.text()):  # the paired batch has ITM negatives
        got = O.hf_pretraining_losses(model, batch)
        total = sum(got.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        seen.update({k: v.item() for k, v in got.items()})
    assert set(seen) == {"mim", "mlm", "global_contrastive", "itm", "mmm_image", "mmm_text"}
    assert all(math.isfinite(v) and v > 0 for v in seen.values())
    assert not torch.equal(before, model.flava.text_projection.weight)


@pytest.mark.parametrize("row_name, expected", [
    ("MIM", {"mim"}), ("MLM", {"mlm"}), ("FLAVA_C", {"global_contrastive"}),
    ("FLAVA_MM", {"global_contrastive", "itm", "mmm_image", "mmm_text"}),
    ("FLAVA", {"mim", "mlm", "global_contrastive", "itm", "mmm_image", "mmm_text"}),
    (A.INIT_ROW, {"mim", "mlm", "global_contrastive", "itm", "mmm_image", "mmm_text"}),
])
def test_each_ablation_row_turns_on_exactly_its_losses(sampler, row_name, expected):
    row = A.table3_rows()[row_name]
    model = M.build_model(TINY, seed=0).eval()
    seen = set()
    for source, p in row.sources.items():
        assert p > 0
        with torch.no_grad():
            seen |= {name for name, _ in O.losses(model, getattr(sampler, source)(), row.objectives, gather=False).items()}
    assert seen == expected


def test_round_robin_draws_sources_with_the_rows_probabilities(data):
    row = A.table3_rows(0.7, 0.15, 0.15)["FLAVA"]
    sampler = D.BatchSampler(data, TINY, batch_size=4, seed=3)
    drawn = [sampler.draw(row)[0] for _ in range(300)]
    assert abs(drawn.count("paired") / 300 - 0.7) < 0.08  # 3 sigma is 0.079
    assert drawn.count("images") > 25 and drawn.count("text") > 25
    assert {s for s, _ in (sampler.draw(A.table3_rows()["MIM"]) for _ in range(20))} == {"images"}


def test_paired_batch_mixes_matched_and_unmatched_pairs(sampler, data):
    batch = sampler.paired()
    ids = batch.itm_ids_masked.where(batch.mlm_labels.eq(O.CE_IGNORE), batch.mlm_labels)
    negative = batch.itm_labels.eq(0)
    assert negative.any() and (~negative).any()
    assert torch.equal(ids[~negative], batch.input_ids[~negative])
    assert (ids[negative] != batch.input_ids[negative]).any(1).all()  # a negative's caption is another caption


def test_vq_tokens_are_nearest_codebook_entries(data):
    x = D.to_pixels(data.paired_images[:4])
    codes = data.vq.encode(x)  # (4, P)
    patches = T.patchify(x, TINY.patch_size)  # (4, P, 3 p p)
    assert torch.equal(codes, torch.cdist(patches, data.vq.codebook.expand(4, -1, -1)).argmin(-1))
    assert codes.shape == (4, TINY.num_patches)


def test_patchify_order_matches_the_vit_patch_grid():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    p = T.patchify(x, 8)  # (2, 4, 192)
    assert torch.equal(p[1, 1].view(3, 8, 8), x[1, :, 0:8, 8:16])  # patch 1 = top row, second column
    assert torch.equal(p[0, 2].view(3, 8, 8), x[0, :, 8:16, 0:8])


# --------------------------------------------------------------- Table 3, row 6: unimodal initialisation
def _state(model, paths) -> dict[str, torch.Tensor]:
    return {f"{path}.{k}": v for path in paths for k, v in model.get_submodule(path).state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _trained_like(seed: int, shift: float):
    """A model standing in for a trained row: seed ``seed``'s weights, every parameter moved by ``shift``."""
    model = M.build_model(TINY, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift)
    return model


def test_row6_is_row5_with_init_from_the_mim_and_mlm_rows():
    rows = A.table3_rows()
    six, five = rows[A.INIT_ROW], rows["FLAVA"]
    assert (six.objectives, six.sources, six.domains) == (five.objectives, five.sources, five.domains)
    assert six.init == {"image": "MIM", "text": "MLM"} and not five.init


def test_row6_init_copies_the_trained_image_and_text_encoders_before_training():
    mim, mlm = _trained_like(0, 0.5), _trained_like(0, -0.25)
    trained = {("MIM", "image", 0): A.encoder_state(mim, "image"), ("MLM", "text", 0): A.encoder_state(mlm, "text")}
    model = P.build_row_model(TINY, A.table3_rows()[A.INIT_ROW], 0, trained)
    fresh = M.build_model(TINY, 0)
    image, text = A.INIT_PARTS["image"], A.INIT_PARTS["text"]
    _assert_same_state(_state(model, image), _state(mim, image))  # image encoder + MIM head from the MIM row
    _assert_same_state(_state(model, text), _state(mlm, text))  # text encoder + MLM head from the MLM row
    rest = ("flava.multimodal_model", "flava.image_projection", "flava.text_projection", "flava.image_to_mm_projection",
            "flava.text_to_mm_projection", "itm_head", "mmm_image_head", "mmm_text_head")
    _assert_same_state(_state(model, rest), _state(fresh, rest))  # everything else: the row's own random init
    assert not torch.equal(model.flava.image_model.embeddings.cls_token, fresh.flava.image_model.embeddings.cls_token)
    assert torch.equal(model.flava.logit_scale, fresh.flava.logit_scale)


_FAKE_EV = type("Ev", (), {"retrieval_captions": ["c"]})()


def _stub_evaluation(monkeypatch) -> None:
    """run_ablation's evaluation stubbed: every domain scores 50, nothing is drawn."""
    monkeypatch.setattr(E, "evaluate", lambda model, row, ev, seed, finetune, qa_finetune=None: {d: {"average": 50.0} for d in (row or A.table3_rows()["FLAVA"]).domains})
    monkeypatch.setattr(E, "itm_accuracy", lambda model, ev: {"accuracy": 50.0, "low": 45.0, "high": 55.0, "n": 10})
    monkeypatch.setattr(E, "similarity_matrix", lambda model, ev: [[0.0]])
    monkeypatch.setattr(E, "retrieval_examples", lambda model, ev, seed: [])
    monkeypatch.setattr(E, "loss_windows", lambda values: values)


def test_the_ablation_keeps_each_row_and_seed_in_rows_and_checkpoints_where_rows_give_a_folder(monkeypatch, tmp_path):
    from reproduce import config

    params = config.resolve("flava", "smoke", {"rows": ["MIM"], "seeds": [0], "checkpoint_every": 2})
    cfgs = []

    def fake_pretrain(model, row, sampler, cfg, device):
        cfgs.append(cfg)
        return {"total": [1.0]}

    monkeypatch.setattr(E, "pretrain", fake_pretrain)
    monkeypatch.setattr(E, "BatchSampler", lambda *args: None)
    _stub_evaluation(monkeypatch)
    rows = KeptRows(tmp_path)
    first, _ = E.run_ablation(params, data=None, ev=_FAKE_EV, device="cpu", rows=rows)
    assert rows.computed == ["table3-MIM-0", "table3-untrained-0"]  # the rows first, the untrained reference last
    assert [(str(c.checkpoint_dir), c.checkpoint_every) for c in cfgs] == [(str(tmp_path / "table3-MIM-0"), 2)]
    again, _ = E.run_ablation(params, data=None, ev=_FAKE_EV, device="cpu", rows=rows)  # a rerun: every row read back
    assert again == first and len(cfgs) == 1
    E.run_ablation(params, data=None, ev=_FAKE_EV, device="cpu")  # MemoryRows: nothing kept, no checkpoints
    assert (cfgs[-1].checkpoint_dir, cfgs[-1].checkpoint_every) == (None, 0)


def test_the_ablation_trains_row6_from_the_same_seeds_trained_mim_and_mlm_rows(monkeypatch):
    """run_ablation's wiring, with training stubbed: each row's "training" moves every weight by a
    row- and seed-specific amount, and row 6 must start from the MIM/MLM rows' weights of its seed."""
    from reproduce import config

    params = config.resolve("flava", "smoke", {"rows": [A.INIT_ROW, "MIM", "FLAVA_C", "MLM"], "seeds": [3, 4]})
    shift = {name: i + 1.0 for i, name in enumerate(params.rows)}
    after, before = {}, {}

    def fake_pretrain(model, row, sampler, cfg, device):
        before[(row.name, sampler_seed[0])] = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift[row.name] * 10 + sampler_seed[0])
        after[(row.name, sampler_seed[0])] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"total": [1.0]}

    sampler_seed = [None]

    class FakeSampler:
        def __init__(self, data, sizes, batch_size, seed, *args):
            sampler_seed[0] = seed

    monkeypatch.setattr(E, "pretrain", fake_pretrain)
    monkeypatch.setattr(E, "BatchSampler", FakeSampler)
    _stub_evaluation(monkeypatch)
    runs, _ = E.run_ablation(params, data=None, ev=_FAKE_EV, device="cpu")

    assert [(r.row, r.seed) for r in runs] == [(n, s) for n in [E.UNTRAINED, *params.rows] for s in (3, 4)]  # asked order
    for seed in (3, 4):
        start = before[(A.INIT_ROW, seed)]
        for part, source in (("image", "MIM"), ("text", "MLM")):
            keys = [k for k in start if any(k.startswith(path + ".") for path in A.INIT_PARTS[part])]
            assert keys
            for k in keys:
                assert torch.equal(start[k], after[(source, seed)][k]), (part, k)
        mm = [k for k in start if k.startswith("flava.multimodal_model.")]
        fresh = M.build_model(E.sizes_from(params), seed).state_dict()
        assert all(torch.equal(start[k], fresh[k]) for k in mm)


def test_row6_without_its_source_rows_is_refused_before_any_work():
    from reproduce import config

    for rows in ([A.INIT_ROW], ["MIM", A.INIT_ROW], ["FLAVA", A.INIT_ROW]):
        with pytest.raises(config.ParamError, match=r"rows.*FLAVA\+init.*MIM.*MLM.*add them"):
            config.resolve("flava", "cpu", {"rows": rows})
    assert config.resolve("flava", "smoke", {"rows": ["MLM", "MIM", A.INIT_ROW]}).rows == ["MLM", "MIM", A.INIT_ROW]
    with pytest.raises(ValueError, match="needs the trained parts"):
        P.build_row_model(TINY, A.table3_rows()[A.INIT_ROW], 0, trained={})
    with pytest.raises(ValueError, match="missing or form a cycle"):
        P.training_order({A.INIT_ROW: A.table3_rows()[A.INIT_ROW]})
    with pytest.raises(ValueError, match="unknown init parts"):
        A.AblationRow("x", O.Objectives(gc=True), {"paired": 1.0}, (), init={"vision": "MIM"})
    with pytest.raises(ValueError, match="must hold exactly"):
        A.initialise_from(M.build_model(TINY, 0), {"image": {"flava.image_model": {}}})


# ------------------------------------------------------------------- claims of each section (synthetic)
def _run(**overrides):
    from reproduce import config, results

    return results.Run(config.resolve("flava", "smoke", overrides))


LEARNT_ITM = {"FLAVA_MM": [{"seed": s, "accuracy": a, "low": a - 3, "high": a + 3, "n": 600} for s, a in enumerate([80.0, 84.0, 82.0])]}


def _table3_claims(per_seed: dict[str, list[float]], controls: bool = True, itm: dict = LEARNT_ITM) -> dict:
    """``table3_claims`` on rows whose every domain and macro take the given per-seed values (seeds 0, 1, ...).

    ``controls``: add the untrained row (10 on every seed) and the MIM / MLM source rows (20), so that
    each claim's precondition (its rows beat the untrained row) can be measured."""
    if controls:
        n = len(next(iter(per_seed.values())))
        per_seed = {E.UNTRAINED: [10.0] * n, "MIM": [20.0] * n, "MLM": [20.0] * n, **per_seed}
    run = _run()
    seeds = [{"row": n, "seed": i, **{d: m for d in V.DOMAINS}, "macro": m} for n, v in per_seed.items() for i, m in enumerate(v)]
    tasks = {n: {f"{d}/task": statistics.fmean(v) for d in V.DOMAINS} for n, v in per_seed.items()}
    S.claim_table3(run, seeds, tasks, itm)
    return {c.id: c for c in run.claims}


def test_table3_claims_hold_when_every_seed_agrees():
    c = _table3_claims({"FLAVA_C": [40.0, 42.0, 41.0], "FLAVA_MM": [45.0, 46.5, 45.5],
                        "FLAVA": [44.0, 45.0, 44.5], A.INIT_ROW: [50.0, 51.0, 50.0]})
    assert {k: v.verdict for k, v in c.items()} == dict.fromkeys(
        ["table3_mm_beats_c_multimodal", "table3_mm_beats_c_language", "table3_init_improves_full",
         "table3_full_best_macro"], "holds")
    diff = c["table3_init_improves_full"].ours
    assert diff.value == pytest.approx(statistics.fmean([6.0, 6.0, 5.5])) and diff.n == 3 and diff.units == (6.0, 6.0, 5.5)
    assert c["table3_mm_beats_c_multimodal"].paper == "69.11 vs 66.25"  # rendered from PAPER
    for claim in c.values():
        assert claim.relation == ">" and claim.threshold == 0.0 and claim.source.startswith("paper: Table 3")
        assert "per seed [0, 1, 2]" in claim.note and "cannot tell" not in claim.note


def test_table3_claims_contradicted_when_every_seed_disagrees():
    c = _table3_claims({"FLAVA_C": [50.0, 52.0, 51.0], "FLAVA_MM": [45.0, 46.0, 45.5],
                        "FLAVA": [44.0, 45.0, 44.5], A.INIT_ROW: [40.0, 40.5, 40.2]})
    assert {v.verdict for v in c.values()} == {"contradicted"}
    note = c["table3_mm_beats_c_multimodal"].note
    assert note.startswith("contradicted at our scale: FLAVA_MM - FLAVA_C per multimodal task (means): task -5.50")
    assert "macro" in c["table3_init_improves_full"].note and "vision -4.27" in c["table3_init_improves_full"].note


def test_table3_claims_inconclusive_when_the_seeds_straddle_or_there_is_one_seed():
    c = _table3_claims({"FLAVA_C": [43.7, 61.9, 50.0], "FLAVA_MM": [62.7, 61.1, 50.5],  # +19.0, -0.8, +0.5: straddles
                        "FLAVA": [51.0, 56.7, 54.0], A.INIT_ROW: [57.0, 57.5, 57.2]})
    mm = c["table3_mm_beats_c_multimodal"]
    assert mm.verdict == "inconclusive" and mm.ours.value == pytest.approx((19.0 - 0.8 + 0.5) / 3)
    assert mm.ours.low < 0 < mm.ours.high and mm.note.startswith("the seeds cannot tell")
    assert "FLAVA_C 43.70 / 61.90 / 50.00" in mm.note
    one = _table3_claims({"FLAVA_C": [40.0], "FLAVA_MM": [45.0], "FLAVA": [44.0], A.INIT_ROW: [50.0]})
    assert {v.verdict for v in one.values()} == {"not testable"}  # one seed: no row's gain can be measured
    assert one["table3_init_improves_full"].ours.low == -math.inf
    two = _table3_claims({"FLAVA_C": [40.0, 41.0], "FLAVA_MM": [45.0, 46.5], "FLAVA": [44.0, 45.0], A.INIT_ROW: [50.0, 51.0]})
    assert {v.verdict for v in two.values()} == {"not testable"}  # fewer than 3 seeds: no interval, by rule


def test_table3_claims_are_not_testable_without_the_untrained_row():
    c = _table3_claims({"FLAVA_C": [40.0, 42.0, 41.0], "FLAVA_MM": [45.0, 46.5, 45.5],
                        "FLAVA": [44.0, 45.0, 44.5], A.INIT_ROW: [50.0, 51.0, 50.0]}, controls=False)
    assert {v.verdict for v in c.values()} == {"not testable"}
    assert all(v.precondition is not None and v.precondition.value is None for v in c.values())


def test_table3_each_comparison_is_claimed_once():
    """Row 5 is the strongest other row here; it is compared with row 6 once (init improves full),
    so "full FLAVA best" compares row 6 with the best of the remaining rows (FLAVA_MM)."""
    c = _table3_claims({"MIM": [20.0, 21.0], "FLAVA_C": [40.0, 41.0], "FLAVA_MM": [45.0, 46.0],
                        "FLAVA": [49.0, 48.0], A.INIT_ROW: [50.0, 52.0]})
    assert "minus FLAVA_MM" in c["table3_full_best_macro"].text
    assert c["table3_full_best_macro"].ours.units == (5.0, 6.0)
    assert c["table3_init_improves_full"].ours.units == (1.0, 4.0)
    # without row 6 the paper claims no "best" for row 5 (73.72 < FLAVA_MM's 74.23): no such claim
    no_init = _table3_claims({"FLAVA_C": [40.0, 41.0], "FLAVA_MM": [45.0, 46.0], "FLAVA": [49.0, 48.0]})
    assert set(no_init) == {"table3_mm_beats_c_multimodal", "table3_mm_beats_c_language"}


def test_table3_claims_refuse_rows_that_do_not_share_seeds():
    seeds = [{"row": "FLAVA_C", "seed": 0, **dict.fromkeys(V.DOMAINS, 1.0), "macro": 1.0},
             {"row": "FLAVA_MM", "seed": 1, **dict.fromkeys(V.DOMAINS, 1.0), "macro": 1.0}]
    with pytest.raises(ValueError, match="share their seeds"):
        S.claim_table3(_run(), seeds, {})


@pytest.mark.parametrize("gap, verdict", [(3e-7, "holds"), (0.0, "holds"), (2e-3, "contradicted")])
def test_hf_path_claim_is_an_exact_check(gap, verdict):
    run = _run()
    S.claim_hf_path(run, {"max_abs_gap": gap, "losses": dict.fromkeys(S.HF_LOSS_NAMES, 1.0), "parameters": 10})
    (claim,) = run.claims
    assert claim.verdict == verdict and not claim.ours.noisy and claim.source.startswith("ours: ")


def test_stable_values_hold_the_paper_table_and_no_measured_value():
    from reproduce import results

    run = _run()
    run.record("hf_path", {"max_abs_gap": 1e-7, "losses": dict.fromkeys(S.HF_LOSS_NAMES, 1.234567), "parameters": 123})
    S.claim_hf_path(run, run.measured["hf_path"])
    S.claim_table3(run, [{"row": n, "seed": 0, **dict.fromkeys(V.DOMAINS, m), "macro": m}
                          for n, m in (("FLAVA_C", 40.1234), ("FLAVA_MM", 45.0), ("FLAVA", 44.0), (A.INIT_ROW, 50.0))], {})
    text = results.stable_text(S.stable_values(run))
    assert "paper.table3.FLAVA_MM.macro: 74.23" in text and "hf_losses_agree: True" in text and "parameters: 123" in text
    assert "rows.FLAVA.updates: 6" in text  # smoke: 4 paired draws at p = 0.70
    assert "claims.table3_full_best_macro: ours > 0 (paper: Table 3" in text
    assert "1.23457" not in text and "40.12" not in text and "inconclusive" not in text


def test_notebook_makes_no_claim_and_checks_its_stable_values():
    import json

    from conftest import REPO_ROOT

    cells = json.loads((REPO_ROOT / "notebooks" / "02_flava.ipynb").read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any("claim(" in "".join(c["source"]) for c in code)
    checked = [c for c in code if "checked" in c["metadata"].get("tags", [])]
    assert len(checked) == 1 and "".join(checked[0]["source"]).startswith("# NBVAL_CHECK_OUTPUT")
    assert "paper.table3.FLAVA+init.macro: 75.85" in "".join(checked[0]["outputs"][0]["text"])
    assert all(not c.get("outputs") for c in code if c is not checked[0])
    assert "summary" in code[-1]["metadata"].get("tags", [])


# --------------------------------------------------------------------------------------- evaluation
def test_retrieval_recalls_perfect_and_reversed_embeddings():
    emb = torch.eye(6)
    captions = [f"c{i}" for i in range(6)]
    assert V.retrieval_recalls(emb, emb, captions) == {"TR R@1": 100.0, "IR R@1": 100.0, "TR R@5": 100.0, "IR R@5": 100.0}
    shifted = emb.roll(1, 0)
    assert V.retrieval_recalls(emb, shifted, captions)["TR R@1"] == 0.0
    assert V.retrieval_recalls(emb, shifted, ["same"] * 6)["TR R@1"] == 100.0  # equal captions count as hits


def test_macro_average_counts_a_missing_domain_as_zero():
    assert V.macro_average({"vision": {"average": 57.46}}) == pytest.approx(19.1533, abs=1e-3)  # Table 3 row 1


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) + np.repeat(np.eye(5)[:2] * 6, 100, axis=0)
    y = np.repeat([0, 1], 100)
    perm = rng.permutation(200)
    assert V.linear_probe(x[perm[:100]], y[perm[:100]], x[perm[100:]], y[perm[100:]]) > 95


# ----------------------------------------------------------------------------------------- scenes
def test_scenes_are_deterministic_by_seed():
    a, b = scenes.make_scenes(20, 32, 7), scenes.make_scenes(20, 32, 7)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions and a.negatives == b.negatives
    assert scenes.make_scenes(20, 32, 8).captions != a.captions


def test_backgrounds_textured_once_per_tile_equal_the_per_image_texture():
    """make_scenes crops each background from ``textured_backgrounds(tile)``; the former per-image
    computation (crop the tile, add the colour, clip, convert) gives the same pixels."""
    rng = np.random.default_rng(0)
    tile = scenes.texture_tile(32, rng)
    textured = scenes.textured_backgrounds(tile)
    for background, colour in zip(textured, scenes.BACKGROUNDS):
        for y, x in rng.integers(32, size=(5, 2)):
            direct = np.clip(np.asarray(colour, np.float32) + tile[y : y + 32, x : x + 32], 0, 255).astype(np.uint8)
            assert np.array_equal(np.asarray(background.crop((x, y, x + 32, y + 32))), direct)
    scene, r1, r2 = scenes.SceneSampler().sample(rng), np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(scenes.render(scene, 32, r1, tile=tile), scenes.render(scene, 32, r2, backgrounds=textured))


def test_held_out_combinations_never_train_and_always_test():
    held = scenes.held_out_pairs()
    assert len(held) == len(scenes.SHAPES) and len({c for _, c in held}) == len(held)
    train = scenes.make_scenes(300, 32, 0, scenes.SceneSampler("train"))
    test = scenes.make_scenes(300, 32, 0, scenes.SceneSampler("test"))
    assert all(not (s.pairs() & held) for s in train.scenes)
    assert all(s.pairs() & held for s in test.scenes)


def test_hard_negative_changes_exactly_one_attribute():
    sampler, rng = scenes.SceneSampler("train"), np.random.default_rng(0)
    for _ in range(200):
        scene = sampler.sample(rng)
        neg = sampler.negative(scene, rng)
        assert neg.caption() != scene.caption()
        diffs = sum(a != b for o, n in zip(scene.objects, neg.objects) for a, b in
                    ((o.shape, n.shape), (o.colour, n.colour), (o.size, n.size))) + (scene.relation != neg.relation)
        assert diffs == 1


# ------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=30, patch_size=8), "multiple of patch_size"),
    (dict(hidden=30, heads=4), "multiple of heads"),
    (dict(image_size=8, patch_size=8), "at least 2x2"),
    (dict(hidden=0), "positive int"),
    (dict(codebook_size=2.5), "positive int"),
])
def test_sizes_refuse_nonsense(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.FlavaSizes(**kwargs)


def test_bad_objectives_rows_and_masking_are_refused(data):
    with pytest.raises(ValueError, match="at least one objective"):
        O.Objectives()
    with pytest.raises(ValueError, match="sum to 1"):
        A.table3_rows(0.7, 0.2, 0.2)
    with pytest.raises(ValueError, match="no objective uses it"):
        A.AblationRow("x", O.Objectives(gc=True), {"paired": 0.5, "text": 0.5}, ("language",))
    with pytest.raises(ValueError, match="unknown sources"):
        A.AblationRow("x", O.Objectives(gc=True), {"pairs": 1.0}, ())
    with pytest.raises(ValueError, match="mask ratio"):
        BlockMasking(grid=8, ratio=1.0)
    with pytest.raises(ValueError, match="text mask probability"):
        mask_text(data.text_ids[:2], data.tokenizer, prob=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        D.BatchSampler(data, TINY, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="itm_negative_prob"):
        D.BatchSampler(data, TINY, batch_size=4, seed=0, itm_negative_prob=1.5)
    with pytest.raises(TypeError, match="unknown batch type"):
        O.losses(None, object(), O.Objectives(gc=True))


def test_bad_scene_inputs_are_refused():
    with pytest.raises(ValueError, match="split"):
        scenes.SceneSampler("valid")
    with pytest.raises(ValueError, match="emoji_names"):
        scenes.SceneSampler(emoji_prob=0.5)
    obj = scenes.SceneObject("circle", "red", "small")
    with pytest.raises(ValueError, match="1 or 2 objects"):
        scenes.Scene((obj, obj, obj), "above", 0)
    with pytest.raises(ValueError, match="relation"):
        scenes.Scene((obj, obj), None, 0)
    with pytest.raises(ValueError, match="n >= 1"):
        scenes.make_scenes(0, 32, 0)


def test_flava_full_fails_fast_and_says_why_when_the_hub_is_offline(monkeypatch, no_network):
    """Fast: with HF_HUB_OFFLINE=1 no connection is even attempted (no_network fails the test if it is)."""
    from reproduce import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="facebook/flava-full"):
        M.load_flava_full()


def test_config_rows_match_the_model_and_bad_parameters_are_refused():
    from reproduce import config
    from reproduce.configs.flava import INIT_SOURCES, TABLE3_ROWS

    assert tuple(A.table3_rows()) == TABLE3_ROWS
    assert {n: tuple(r.init.values()) for n, r in A.table3_rows().items() if r.init} == INIT_SOURCES
    assert set(S.PAPER["table3"]) == set(TABLE3_ROWS)
    params = config.resolve("flava", "cpu")
    assert E.sizes_from(params).grid == params.image_size // params.patch_size
    with pytest.raises(config.ParamError, match="rows"):
        config.resolve("flava", "smoke", {"rows": ["FLAVA_X"]})
    with pytest.raises(ValueError, match="sum to 1"):
        E.rows_from(config.resolve("flava", "smoke", {"p_text": 0.5}))


# ------------------------------------------------------------------ PMD pairs from the hub (gpu profile)
def _picture(width: int, height: int, colours: list[tuple[int, int, int]]):
    """A PIL image of vertical stripes of equal width, one per colour."""
    from PIL import Image

    arr = np.zeros((height, width, 3), dtype=np.uint8)
    for i, c in enumerate(colours):
        arr[:, i * width // len(colours) : (i + 1) * width // len(colours)] = c
    return Image.fromarray(arr)


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def test_pmd_rows_become_square_uint8_images_and_captions():
    from reproduce.data import pmd

    wide = _picture(48, 16, [RED, BLUE, GREEN])  # 16 px high: the centre crop keeps only the blue stripe
    rows = [
        {"image": wide, "text": "  a wide   picture ", "image_url": None},
        {"image": None, "text": "no image and no link", "image_url": None},
        {"image": wide, "text": "", "image_url": None},  # no caption: skipped
        {"image": {"bytes": _png(_picture(40, 80, [GREEN]))}, "text": "stored as bytes", "image_url": None},
        {"image": None, "text": "fetched from its link", "image_url": "http://pictures/red"},
        {"image": wide, "text": "beyond n", "image_url": None},
    ]
    fetched = []

    def fetch(url):
        fetched.append(url)
        return _png(_picture(20, 20, [RED]))

    out = pmd.pairs_from_rows(rows, 3, 16, source="coco", fetch_url=fetch)
    assert out.images.shape == (3, 16, 16, 3) and out.images.dtype == np.uint8
    assert out.captions == ["a wide picture", "stored as bytes", "fetched from its link"]
    assert out.sources == ["coco"] * 3 and fetched == ["http://pictures/red"]
    assert (out.images[0] == BLUE).all() and (out.images[1] == GREEN).all() and (out.images[2] == RED).all()


def test_pmd_rows_of_other_datasets_caption_lists_and_missing_columns():
    from reproduce.data import pmd

    rows = [{"img": _picture(8, 8, [RED]), "caption": ["", "the second caption", "a third"]}]
    out = pmd.pairs_from_rows(rows, 5, 4)  # fewer rows than asked: what there is
    assert out.captions == ["the second caption"] and out.images.shape == (1, 4, 4, 3)
    with pytest.raises(KeyError, match="no caption column.*their columns: \\['image', 'label'\\]"):
        pmd.pairs_from_rows([{"image": _picture(8, 8, [RED]), "label": 3}], 1, 4)
    with pytest.raises(KeyError, match="no image column 'picture'"):
        pmd.pairs_from_rows(rows, 1, 4, image_field="picture")
    with pytest.raises(ValueError, match="n >= 1"):
        pmd.pairs_from_rows(rows, 0, 4)


def _pmd_like_parquet(path, shades: list[int | None], captions: list[str]) -> None:
    """A Parquet file laid out as the hub stores image datasets (an Image column, PMD's columns);
    a shade of None is a row whose image is only a link."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [None if v is None else {"bytes": _png(_picture(30, 20, [(v, v, v)])), "path": None} for v in shades]
    urls = [f"http://pictures/{i}" if v is None else None for i, v in enumerate(shades)]
    table = pa.table({"image": pa.array(images, type=image), "text": captions, "image_url": urls})
    features = {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"},
                "image_url": {"dtype": "string", "_type": "Value"}}
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}), path)


def test_pmd_hub_pairs_streams_each_subset_with_datasets(tmp_path, monkeypatch):
    """hub_pairs end to end through ``datasets`` streaming, the hub replaced by local Parquet files."""
    datasets = pytest.importorskip("datasets")
    import reproduce.runtime
    from reproduce.data import pmd

    _pmd_like_parquet(tmp_path / "coco.parquet", [10, 20, 30], ["c one", "c two", "c three"])
    _pmd_like_parquet(tmp_path / "sbu.parquet", [None, 50, 60], ["s linked", "s two", "s three"])
    load = datasets.load_dataset
    opened = []

    def from_disk(dataset_id, config, split, streaming):
        opened.append((dataset_id, config, split, streaming))
        return load("parquet", data_files=str(tmp_path / f"{config}.parquet"), split="train", streaming=True)

    monkeypatch.setattr(reproduce.runtime, "hub_offline", lambda *a, **k: False)
    monkeypatch.setattr(datasets, "load_dataset", from_disk)
    monkeypatch.setattr(pmd, "fetch_image_bytes", lambda url: _png(_picture(8, 8, [(99, 99, 99)])))
    out = pmd.hub_pairs("facebook/pmd", ["coco", "sbu"], 5, 16, split="train", caption_column="text", seed=0)
    assert opened == [("facebook/pmd", "coco", "train", True), ("facebook/pmd", "sbu", "train", True)]
    assert out.images.shape == (5, 16, 16, 3) and out.sources == ["coco"] * 3 + ["sbu"] * 2  # 5 shared 3 + 2
    shade = {c: int(img[0, 0, 0]) for c, img in zip(out.captions, out.images)}
    assert {shade[c] for c in ("c one", "c two", "c three")} == {10, 20, 30}
    assert all(shade[c] == {"s linked": 99, "s two": 50, "s three": 60}[c] for c in out.captions if c.startswith("s "))
    with pytest.raises(ValueError, match="gave 3 usable pairs, fewer than the 4"):
        pmd.hub_pairs("facebook/pmd", ["coco", "sbu"], 8, 16, split="train", caption_column="text")
    from reproduce import hub

    with pytest.raises(hub.HubError, match=r"no column\(s\) \['caption'\].*pairs_caption_column"):
        pmd.hub_pairs("facebook/pmd", ["coco"], 2, 16, split="train")  # PMD's captions are in `text`


def test_pmd_offline_fails_at_once_naming_the_offline_alternative(monkeypatch, no_network):
    """At once: with HF_HUB_OFFLINE=1 no connection is even attempted (no_network fails the test if it is)."""
    from reproduce.data import pmd
    from reproduce.hub import HubError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="flickr30k.*offline.*pairs_source='scenes' \\(profile=cpu\\).*pairs_dataset"):
        pmd.hub_pairs(pmd.DEFAULT_DATASET, [], 10, 32)


def test_pmd_without_datasets_says_how_to_install(monkeypatch):
    import sys

    import reproduce.runtime
    from reproduce.data import pmd

    monkeypatch.setattr(reproduce.runtime, "hub_offline", lambda *a, **k: False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        pmd.hub_pairs("facebook/pmd", ["coco"], 10, 32)


def test_pmd_that_cannot_be_opened_says_what_to_check(monkeypatch):
    import sys
    import types

    import reproduce.runtime
    from reproduce import hub
    from reproduce.data import pmd

    class GatedRepoError(Exception):
        pass

    def refuse(*args, **kwargs):
        raise GatedRepoError("Access to dataset facebook/pmd is restricted")

    monkeypatch.setattr(reproduce.runtime, "hub_offline", lambda *a, **k: False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=refuse))
    with pytest.raises(hub.HubError, match=r"facebook/pmd.*gated.*hf auth login.*pairs_dataset") as err:
        pmd.hub_pairs("facebook/pmd", ["coco"], 10, 32, split="train")
    assert err.value.kind == "gated" and "\n" not in str(err.value)


def test_pairs_source_parameters_and_profiles():
    from reproduce import config
    from reproduce.configs.flava import PAIRS_DATASET, PMD_DATASET, hub_datasets
    from reproduce.data import pmd

    gpu = config.resolve("flava", "gpu")
    assert gpu.pairs_source == "hub" and gpu.pairs_dataset == PAIRS_DATASET == pmd.DEFAULT_DATASET
    assert PMD_DATASET == pmd.PMD_DATASET
    assert (gpu.pairs_split, gpu.pairs_image_column, gpu.pairs_caption_column) == ("test", "image", "caption")
    assert config.resolve("flava", "cpu").pairs_source == config.resolve("flava", "smoke").pairs_source == "scenes"
    assert hub_datasets(gpu) == [{"param": "pairs_dataset", "id": PAIRS_DATASET, "config": None, "split": "test",
                                  "columns": ["image", "caption"], "alternative": pmd.OFFLINE_ALTERNATIVE}]
    assert hub_datasets(config.resolve("flava", "cpu")) == []
    with pytest.raises(config.ParamError, match="pairs_source.*'scenes', 'hub'"):
        config.resolve("flava", "cpu", {"pairs_source": "web"})
    with pytest.raises(config.ParamError, match="pairs_configs"):
        config.resolve("flava", "cpu", {"pairs_configs": "coco"})


@pytest.mark.parametrize("overrides, match", [
    ({"micro_batch": 12}, "micro_batch.*must divide batch_size 16.*micro_batch=8"),
    ({"micro_batch": 32}, "micro_batch.*must divide"),
    ({"micro_batch": 1, "batch_size": 16}, "micro_batch.*in-batch negative"),
    ({"batch_size": 200}, "n_images.*smaller than batch_size 200"),
    ({"n_text": 16, "batch_size": 32}, "n_text.*smaller than batch_size 32"),
    ({"vq_fit_images": 300}, "vq_fit_images.*n_pairs 256"),
    ({"warmup": 100}, "warmup.*10 x steps"),
    ({"p_text": 0.5}, "p_paired.*sum to 1"),
])
def test_spec_checks_refuse_combinations_that_would_crash_late(overrides, match):
    from reproduce import config

    with pytest.raises(config.ParamError, match=match):
        config.resolve("flava", "smoke", overrides)


def test_vq_fit_subsample_draws_distinct_images_or_keeps_all():
    from reproduce.flava.data import vq_fit_subsample

    images = np.arange(10)[:, None, None, None] * np.ones((10, 2, 2, 3), dtype=np.uint8)
    assert vq_fit_subsample(images, 0, 0) is images and vq_fit_subsample(images, 10, 0) is images
    sub = vq_fit_subsample(images, 4, 0)
    assert sub.shape == (4, 2, 2, 3) and len(set(sub[:, 0, 0, 0].tolist())) == 4
    assert (sub == vq_fit_subsample(images, 4, 0)).all()


def test_micro_batches_split_each_drawn_batch_and_accumulate_to_it(data):
    from reproduce.flava.pretraining import FlavaTrainConfig, batch_stream

    row = A.table3_rows()["FLAVA"]
    a = batch_stream(D.BatchSampler(data, TINY, 8, seed=3), row)
    fulls = [next(a) for _ in range(3)]  # the block masks draw from Python's global random: one sampler at a time
    b = batch_stream(D.BatchSampler(data, TINY, 8, seed=3), row, micro_batch=4)
    for full in fulls:
        first, second = next(b), next(b)
        assert first["source"] == second["source"] == full["source"]
        for k, v in full.items():
            if k != "source":
                assert torch.equal(torch.cat([first[k], second[k]]), v)
    assert FlavaTrainConfig(steps=2, batch_size=8, micro_batch=4, warmup=1).grad_accum == 2
    assert FlavaTrainConfig(steps=2, batch_size=8, warmup=1).grad_accum == 1
    with pytest.raises(ValueError, match="micro_batch"):
        FlavaTrainConfig(steps=2, batch_size=8, micro_batch=3, warmup=1)


def test_pretraining_data_from_hub_pairs_keeps_them_and_draws_other_captions_as_itm_negatives():
    from reproduce.data import pmd

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    captions = [f"photo number {i // 2} of the set" for i in range(40)]  # pairs of equal captions
    pairs = pmd.ImageCaptionPairs(images, captions, ["coco"] * 40)
    texts = D.TextSources(pretrain=[f"{c} and more words." for c in captions], austen_heldout=[], melville_heldout=[])
    data = D.build_pretrain_data(TINY, n_pairs=999, n_images=16, n_text=16, emoji_prob=0.0, seed=0, texts=texts, pairs=pairs)
    assert data.captions == captions and data.paired_images is images and len(data.paired_tokens) == 40
    negatives = [data.tokenizer.decode(ids, skip_special_tokens=True) for ids in data.negative_ids]
    assert all(neg != cap for neg, cap in zip(negatives, captions)) and set(negatives) <= set(captions)
    batch = D.BatchSampler(data, TINY, batch_size=8, seed=0).paired()
    assert batch.pixel_values.shape == (8, 3, 32, 32)
    with pytest.raises(ValueError, match="image_size"):
        D.build_pretrain_data(TINY, 0, 16, 16, 0.0, 0, texts, pairs=pmd.ImageCaptionPairs(images[:, :16, :16], captions, ["x"] * 40))


def test_released_model_zero_shot_uses_its_own_processor_and_tokenizer(data):
    """The gpu profile's facebook/flava-full row: with a processor that prepares pixels exactly as ours
    (x / 127.5 - 1, no resize) and our tokenizer, ``released_zero_shot`` equals our retrieval path."""
    from transformers import FlavaImageProcessor

    model = M.build_model(TINY, seed=0).eval()
    heldout = scenes.make_scenes(40, TINY.image_size, 7, scenes.SceneSampler("test"))
    ids, mask = T.tokenize(data.tokenizer, heldout.captions, TINY.max_text_len)
    ev = D.EvalData({}, {}, None, heldout.images, ids, mask, heldout.captions)
    ours = V.retrieval_recalls(*V.contrastive_embeddings(model, heldout.images, ids, mask), heldout.captions)
    as_ours = FlavaImageProcessor(do_resize=False, do_center_crop=False, rescale_factor=1 / 127.5,
                                  image_mean=[1.0, 1.0, 1.0], image_std=[1.0, 1.0, 1.0])
    from PIL import Image

    pixels = as_ours(images=[Image.fromarray(x) for x in heldout.images], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, D.to_pixels(heldout.images))  # the processor really prepares pixels as ours
    got = E.released_zero_shot(model, as_ours, data.tokenizer, ev, max_length=TINY.max_text_len)
    assert got == ours and set(got) == {"TR R@1", "IR R@1", "TR R@5", "IR R@5"}
    resized = FlavaImageProcessor(size={"height": 48, "width": 48}, crop_size={"height": TINY.image_size, "width": TINY.image_size})
    other = E.released_zero_shot(model, resized, data.tokenizer, ev, max_length=TINY.max_text_len)
    assert all(0.0 <= v <= 100.0 for v in other.values())


def test_wordpiece_vocabulary_is_the_same_in_every_process():
    """tokenizers' WordPieceTrainer numbered its pieces in hash-map order (other tokens and ids in
    every process); ours must give one vocabulary for the same texts, whatever the process."""
    import json
    import subprocess
    import sys

    from conftest import subprocess_env

    code = ("import json; from reproduce.data import scenes; from reproduce.flava import tokenisers as T; "
            "texts = scenes.make_scenes(400, 16, 3).captions + ['it is a truth universally acknowledged'] * 3; "
            "print(json.dumps(sorted(T.build_wordpiece(texts, 120, 24).get_vocab().items())))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env=subprocess_env()).stdout) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    vocab = dict(runs[0])
    assert [vocab[t] for t in T.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert all(f"##{t}" in vocab for t in vocab if t not in T.SPECIAL_TOKENS and not t.startswith("##"))


# ----------------------------------------------------------------- #15: evaluation that measures pretraining
def test_learned_tokens_start_non_zero_and_no_gradient_explodes_at_init(sampler):
    """HF starts the image [CLS]/[MASK]/positions and [CLS_M] at zero; through LayerNorm (eps 1e-12)
    that gave gradient norms ~1e3 which the global clip turned into ~1000x smaller steps elsewhere."""
    model = M.build_model(TINY, 0).train()
    emb = model.flava.image_model.embeddings
    for t in (emb.cls_token, emb.mask_token, emb.position_embeddings, model.flava.multimodal_model.cls_token):
        assert t.abs().max() > 0 and t.std().item() == pytest.approx(0.02, rel=0.5)
    rows = A.table3_rows()
    O.losses(model, sampler.paired(), rows["FLAVA_MM"].objectives).total().backward()
    norms = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
    tokens = ("embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings", "multimodal_model.cls_token")
    token_max = max(v for n, v in norms.items() if n.endswith(tokens))
    assert token_max < max(v for n, v in norms.items() if not n.endswith(tokens)), sorted(norms.items(), key=lambda kv: -kv[1])[:3]
    M.init_learned_tokens(model, std=0.0)  # HF's zeros: the tokens' gradients dwarf every other weight's
    model.zero_grad()
    O.losses(model, sampler.paired(), rows["FLAVA_MM"].objectives).total().backward()
    zeros = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
    assert max(v for n, v in zeros.items() if n.endswith(tokens)) > 10 * max(v for n, v in zeros.items() if not n.endswith(tokens))


def test_hard_negatives_follow_the_similarities_and_never_pick_an_equal_caption():
    g = torch.Generator().manual_seed(0)
    sim = torch.full((4, 4), -5.0)
    sim[0, 2] = sim[1, 3] = sim[2, 0] = sim[3, 1] = 5.0  # one clearly hardest text per image
    sim.fill_diagonal_(10.0)  # the positives: never drawn
    same = torch.eye(4, dtype=torch.bool)
    text_of_image, image_of_text = O.mine_hard_negatives(sim, same, g)
    assert text_of_image.tolist() == [2, 3, 0, 1] and image_of_text.tolist() == [2, 3, 0, 1]
    same = torch.ones(4, 4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = False  # only texts 0 and 1 differ
    picks = [O.mine_hard_negatives(torch.zeros(4, 4), same, g) for _ in range(50)]
    assert all(t[0].item() == 1 and t[1].item() == 0 for t, _ in picks)
    assert all(t[i].item() != i for t, _ in picks for i in (2, 3))  # no other text: any j != i
    with pytest.raises(ValueError, match=r"\(B, B\)"):
        O.mine_hard_negatives(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.bool))


def test_mined_itm_pairs_are_b_matched_and_b_unmatched(data):
    sampler = D.BatchSampler(data, TINY, batch_size=8, seed=0, itm_negative_prob=0.0)
    batch = sampler.paired()
    model = M.build_model(TINY, 0)
    with torch.no_grad():
        out = model.flava(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          pixel_values=batch.pixel_values, skip_multimodal_encoder=True)
        image, text = O.contrastive_embeddings(model, out.image_embeddings, out.text_embeddings)
        i, t = O.mined_itm_pairs(batch.input_ids, image, text, torch.Generator().manual_seed(0))
        assert i[:4].tolist() == [0, 1, 2, 3] and (t[:4] != torch.arange(4)).all()  # own image, a mined other text
        assert t[4:].tolist() == [4, 5, 6, 7] and (i[4:] != torch.arange(4, 8)).all()  # own text, a mined other image
        # re-pairing one pass's encoder states == encoding the re-paired inputs
        masked = model.flava(input_ids=batch.itm_ids_masked, attention_mask=batch.itm_attention_mask,
                             pixel_values=batch.pixel_values, bool_masked_pos=batch.bool_masked_pos)
        states = masked.image_output.hidden_states[-1], masked.text_output.hidden_states[-1]
        same = O.multimodal_encode(model, *states, batch.itm_attention_mask)
        torch.testing.assert_close(same, masked.multimodal_embeddings, rtol=0, atol=0)
        repaired = model.flava(input_ids=batch.itm_ids_masked[t], attention_mask=batch.itm_attention_mask[t],
                               pixel_values=batch.pixel_values[i], bool_masked_pos=batch.bool_masked_pos[i])
        torch.testing.assert_close(O.multimodal_encode(model, states[0][i], states[1][t], batch.itm_attention_mask[t]),
                                   repaired.multimodal_embeddings, rtol=1e-5, atol=1e-5)
    objectives = A.table3_rows()["FLAVA_MM"].objectives
    terms = O.losses(model, batch, objectives, itm_negatives="mined", generator=torch.Generator().manual_seed(0))
    assert terms.itm is not None and terms.mmm_text is not None
    with pytest.raises(ValueError, match="matched pairs only"):
        O.losses(model, D.BatchSampler(data, TINY, 8, 0).paired(), objectives, itm_negatives="mined")
    with pytest.raises(ValueError, match="turn GC on"):
        O.losses(model, batch, O.Objectives(itm=True), itm_negatives="mined")


def test_replaced_token_task_changes_one_token_from_its_pool(data):
    pools = D.replaced_token_pools(data.tokenizer)
    assert not set(pools[0]) & set(pools[1]) and not set(data.tokenizer.all_special_ids) & (set(pools[0]) | set(pools[1]))
    ids, mask = T.tokenize(data.tokenizer, data.captions[:20], TINY.max_text_len)
    out, labels = D.with_replaced_token(ids, mask, pools[1], np.random.default_rng(0))
    changed = (out != ids).sum(1)
    assert labels.tolist() == [1, 0] * 10 and changed[labels == 1].eq(0).all() and changed[labels == 0].eq(1).all()
    assert set(out[ids != out].tolist()) <= set(pools[1].tolist())


def test_chance_scores_and_wilson_interval():
    y = np.array([0, 0, 0, 1])
    task = D.ProbeTask((), y, (), y)
    ev = D.EvalData({"v": task}, {"l": task}, task, None, None, None, [f"c{i}" for i in range(10)])
    c = V.chance_scores(ev)
    assert c["vision"]["v"] == 75.0 and c["language"]["average"] == 75.0
    assert c["multimodal"]["TR R@1"] == pytest.approx(10.0) and c["multimodal"]["IR R@5"] == pytest.approx(50.0)
    ev.retrieval_captions = ["a", "a", "b", "b"]  # 2 matches among 4: R@1 = 1 - C(2,1)/C(4,1)
    assert V.chance_scores(ev)["multimodal"]["TR R@1"] == pytest.approx(50.0)
    low, high = V.wilson_interval(50, 100)
    assert low == pytest.approx(40.38, abs=0.01) and high == pytest.approx(59.62, abs=0.01)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only spin on a shared machine
    yield
    torch.set_num_threads(threads)


def test_a_trained_toy_encoder_beats_a_random_one_on_replaced_word_detection(one_thread):
    """MLM on captions and a second 'language' of pseudo-words; fine-tuned (GLUE-style, embeddings frozen)
    to detect a replaced token in held-out captions whose test replacements were never seen in fine-tuning."""
    sizes = M.FlavaSizes(**{**TINY.__dict__, "vocab_size": 300})
    rng = np.random.default_rng(0)
    lexicon = sorted({"".join(rng.choice(list("bcdfghklmnprstvwz"))) + rng.choice(list("aeiou")) +
                      rng.choice(list("bcdfghklmnprstvwz")) + "o" for _ in range(150)})
    other = [" ".join(rng.choice(lexicon, rng.integers(6, 12))) for _ in range(400)]
    texts = D.TextSources(pretrain=scenes.make_scenes(400, 32, 5).captions + other, austen_heldout=[], melville_heldout=[])
    data = D.build_pretrain_data(sizes, n_pairs=96, n_images=64, n_text=800, emoji_prob=0.0, seed=0, texts=texts)
    trained = M.build_model(sizes, 0)
    P.pretrain(trained, A.table3_rows()["MLM"], D.BatchSampler(data, sizes, 32, 0),
               P.FlavaTrainConfig(steps=150, batch_size=32, lr=2e-3, warmup=10), device="cpu")
    ids, mask = T.tokenize(data.tokenizer, scenes.make_scenes(400, 32, 9, scenes.SceneSampler("test")).captions,
                           sizes.max_text_len)
    pools = D.replaced_token_pools(data.tokenizer)
    tr_ids, tr_y = D.with_replaced_token(ids[:200], mask[:200], pools[0], rng)
    te_ids, te_y = D.with_replaced_token(ids[200:], mask[200:], pools[1], rng)
    task = D.ProbeTask((tr_ids, mask[:200]), tr_y, (te_ids, mask[200:]), te_y)
    cfg = V.FinetuneConfig(steps=100, warmup=10, lr=1e-3)
    ours = statistics.fmean(V.finetune_text(trained, task, cfg, seed=s) for s in range(3))
    random_ = statistics.fmean(V.finetune_text(M.build_model(sizes, 0), task, cfg, seed=s) for s in range(3))
    assert ours > random_ + 5, (ours, random_)


def _seeds_with_untrained(per_seed: dict[str, dict[str, list[float]]]) -> list[dict]:
    """per_seed: row -> domain (or "macro") -> per-seed values; missing domains are 0."""
    out = []
    for row, v in per_seed.items():
        for i in range(len(next(iter(v.values())))):
            out.append({"row": row, "seed": i, **{d: v.get(d, [0.0] * 9)[i] for d in (*V.DOMAINS, "macro")}})
    return out


def test_controls_hold_and_gate_the_table3_claims_on_rows_that_learnt():
    lang_low = {"vision": [30.0, 31.0, 30.5], "language": [60.0, 61.0, 60.0], "multimodal": [5.0, 6.0, 5.5], "macro": [30.0] * 3}
    up = {"vision": [40.0, 41.5, 40.0], "language": [70.0, 71.0, 70.5], "multimodal": [40.0, 42.0, 41.0], "macro": [50.0] * 3}
    flat = {**up, "language": [60.0, 61.0, 60.0]}  # the language of rows 3-4 never leaves the untrained level
    seeds = _seeds_with_untrained({E.UNTRAINED: lang_low, "MIM": {"vision": up["vision"], "macro": [13.0] * 3},
                                   "MLM": {"language": up["language"], "macro": [23.0] * 3},
                                   "FLAVA_C": flat, "FLAVA_MM": {**flat, "multimodal": [50.0, 51.0, 52.0]},
                                   "FLAVA": up, A.INIT_ROW: {**up, "macro": [52.0, 53.0, 52.5]}})
    run = _run()
    S.claim_controls(run, seeds)
    S.claim_table3(run, seeds, {}, LEARNT_ITM)
    c = {x.id: x for x in run.claims}
    assert {k: c[k].verdict for k in c if k.startswith("control_")} == {
        "control_mim_vision": "holds", "control_mlm_language": "holds", "control_flava_vision": "holds",
        "control_flava_language": "holds", "control_flava_multimodal": "holds"}
    assert all(c[k].source.startswith("ours: control") for k in c if k.startswith("control_"))
    assert c["table3_mm_beats_c_multimodal"].verdict == "holds"
    assert c["table3_mm_beats_c_language"].verdict == "not testable"  # neither row beat the untrained one
    unlearnt = _run()
    S.claim_table3(unlearnt, seeds, {}, {"FLAVA_MM": [{"seed": s, "accuracy": 50.0, "low": 46.0, "high": 54.0, "n": 600}
                                                     for s in range(3)]})
    assert next(x for x in unlearnt.claims if x.id == "table3_mm_beats_c_multimodal").verdict == "not testable"  # ITM at chance
    assert c["table3_init_improves_full"].verdict == "holds" and c["table3_init_improves_full"].precondition.holds
    assert "untrained" not in c["table3_full_best_macro"].text
    gains = S.gain_table(seeds, {d: {"average": 10.0} for d in V.DOMAINS})
    assert gains["MIM"]["vision"]["over_untrained"]["value"] == pytest.approx(10.0) and set(gains["MIM"]) == {"vision"}
    assert gains["FLAVA"]["language"]["over_chance"] == pytest.approx(statistics.fmean(up["language"]) - 10.0)
    assert "over untrained" in S.gains_markdown(gains)


@pytest.mark.parametrize("accuracies, verdict", [([61.0, 63.0, 62.0], "holds"), ([45.0, 46.0, 45.5], "contradicted"),
                                                 ([48.0, 53.0, 50.0], "inconclusive")])
def test_itm_claim_reads_held_out_accuracy_and_marks_flava_mm_when_inactive(accuracies, verdict):
    run = _run()
    itm = {S.ITM_ROW: [{"seed": i, "accuracy": a, "low": a - 4, "high": a + 4, "n": 600} for i, a in enumerate(accuracies)],
           E.UNTRAINED: [{"seed": i, "accuracy": 50.0, "low": 46.0, "high": 54.0, "n": 600} for i in range(3)]}
    S.claim_itm(run, itm)
    (claim,) = run.claims
    assert claim.verdict == verdict and claim.threshold == S.ITM_CHANCE and "untrained: 50.0" in claim.note
    S.claim_table3(run, _seeds_with_untrained({"FLAVA_C": {d: [1.0, 2.0, 3.0] for d in (*V.DOMAINS, "macro")},
                                                "FLAVA_MM": {d: [2.0, 3.0, 4.0] for d in (*V.DOMAINS, "macro")}}), {})
    inactive = "ITM inactive" in next(c for c in run.claims if c.id == "table3_mm_beats_c_multimodal").note
    assert inactive == (verdict != "holds")


class _OnCuda(torch.Tensor):
    """A CPU tensor that says it lives on CUDA (what a GPU run hands the mining), to check on CPU that
    every random draw happens on its generator's device, as CUDA requires."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and torch.device(args[1] if len(args) > 1 else kwargs.get("device", "cpu")).type == "cuda":
            return args[0]  # "moving" to CUDA: it is there already
        if func is torch.Tensor.to:  # to the host: a plain CPU tensor
            return torch.Tensor.as_subclass(args[0], torch.Tensor).to(*args[1:], **kwargs)
        if func is torch.multinomial:  # CUDA's rule: "Expected a 'cuda' device type for generator"
            generator = kwargs.get("generator")
            if generator is not None and generator.device.type != "cuda":
                raise RuntimeError("Expected a 'cuda' device type for generator but found 'cpu'")
        if func is torch.Tensor.device.__get__:
            return torch.device("cuda", 0)
        return super().__torch_function__(func, types, args, kwargs)


class _PretendCuda(torch.overrides.TorchFunctionMode):
    """Tensors made with ``device="cuda"`` are made on the CPU and marked :class:`_OnCuda`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.to and len(args) > 1 and isinstance(args[1], (str, torch.device)) \
                and torch.device(args[1]).type == "cuda":
            return args[0].as_subclass(_OnCuda)
        if kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cuda":
            kwargs["device"] = "cpu"
            return func(*args, **kwargs).as_subclass(_OnCuda)
        return func(*args, **kwargs)


def test_mined_negatives_are_drawn_on_the_generators_device():
    """The pretrainer's generator is a CPU one; on a GPU the similarities are CUDA tensors (bug: the
    first FLAVA_MM update crashed with "Expected a 'cuda' device type for generator")."""
    sim = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
    same = torch.eye(6, dtype=torch.bool)
    on_host = O.mine_hard_negatives(sim, same, torch.Generator().manual_seed(0))
    with _PretendCuda():
        on_cuda = O.mine_hard_negatives(sim.as_subclass(_OnCuda), same.as_subclass(_OnCuda), torch.Generator().manual_seed(0))
    assert on_cuda[0].device.type == "cuda"  # returned where the similarities live
    for a, b in zip(on_host, on_cuda):
        assert a.tolist() == torch.Tensor.as_subclass(b, torch.Tensor).tolist()  # the same draws as on the host


# ---------------------------------------------- several processes: uneven shards, negatives from the global batch
def _flava_worker(rank: int, world: int, port: int, bounds: list[int], batch: O.PairedBatch, tensors: tuple, queue):
    import dataclasses

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        local = slice(bounds[rank], bounds[rank + 1])
        image, text, weight = tensors
        w = weight.clone().requires_grad_(True)
        loss = O.global_contrastive_loss(F.normalize(image[local] @ w, dim=-1), F.normalize(text[local] @ w, dim=-1),
                                         torch.tensor(2.0, dtype=torch.float64))
        share = (bounds[rank + 1] - bounds[rank]) * world / bounds[-1]
        (loss * share).backward()  # as train() weights a share's loss by its rows (DDP then averages the gradients)
        model = M.build_model(TINY, 0).eval()
        mine = O.PairedBatch(**{f.name: getattr(batch, f.name)[local] for f in dataclasses.fields(batch)})
        with torch.no_grad():
            itm = O.paired_losses(model, mine, O.Objectives(gc=True, itm=True), itm_negatives="mined",
                                  generator=torch.Generator().manual_seed(0)).itm
        queue.put((rank, loss.item(), w.grad.numpy(), itm.item()))
    finally:
        dist.destroy_process_group()


def test_uneven_shards_and_mined_negatives_on_two_processes_equal_one_process(sampler):
    """Two processes holding 5 and 3 rows of one batch of 8 (a global batch that does not split evenly,
    e.g. 64 on 6 GPUs): the contrastive loss and its gradient, weighted by rows as train() does, equal
    one process on the whole batch (bug: all_gather needs equal shapes); and the mined ITM negatives
    come from the gathered global batch (bug: each process mined among its own rows only)."""
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64)
    w = weight.clone().requires_grad_(True)
    single = O.global_contrastive_loss(F.normalize(image @ w, dim=-1), F.normalize(text @ w, dim=-1),
                                       torch.tensor(2.0, dtype=torch.float64))
    single.backward()
    batch = D.BatchSampler(sampler.data, TINY, batch_size=8, seed=3, itm_negative_prob=0.0).paired()
    with torch.no_grad():
        itm_single = O.paired_losses(M.build_model(TINY, 0).eval(), batch, O.Objectives(gc=True, itm=True),
                                     itm_negatives="mined", generator=torch.Generator().manual_seed(0)).itm

    bounds = [0, 5, 8]
    results = run_ranks(_flava_worker, lambda r, port, queue: (r, 2, port, bounds, batch, (image, text, weight), queue))
    share = [(bounds[r + 1] - bounds[r]) / 8 for r in range(2)]  # train() weights each share's loss by its rows
    assert sum(s * loss for s, (_, loss, _, _) in zip(share, results)) == pytest.approx(single.item(), abs=1e-12)
    np.testing.assert_allclose(sum(grad for _, _, grad, _ in results) / 2, w.grad.numpy(), atol=1e-12)  # DDP's average
    # ITM: each process's 2 x its rows (matched + mined) are a part of one process's 2 x 8
    assert sum(s * itm for s, (_, _, _, itm) in zip(share, results)) == pytest.approx(itm_single.item(), abs=1e-5)
