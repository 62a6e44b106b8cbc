"""reproduce.hf: config overrides before weights load, load reports, offline errors, the packaged SmolLM2."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, CLIPConfig

from reproduce import hf, runtime
from reproduce.hub import HubError


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BertModel checkpoint (hidden 32, vocab 99) saved with save_pretrained."""
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99)
    torch.manual_seed(0)
    model = BertModel(config)
    path = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(path)
    return path, model.state_dict()


def test_overrides_change_config_before_weights_load(tiny_bert):
    path, saved = tiny_bert
    model, report = hf.load_pretrained(path, overrides={"num_hidden_layers": 1, "hidden_dropout_prob": 0.0})

    assert model.config.num_hidden_layers == 1 and len(model.encoder.layer) == 1
    assert model.config.hidden_dropout_prob == 0.0
    assert report.changed == {"num_hidden_layers": (2, 1), "hidden_dropout_prob": (0.1, 0.0)}
    dropped_layer = {k for k in saved if k.startswith("encoder.layer.1.")}
    assert dropped_layer and set(report.unexpected) == dropped_layer
    assert report.missing == [] and report.mismatched == []
    kept = model.state_dict()
    for key in ("encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight"):
        torch.testing.assert_close(kept[key], saved[key], rtol=0, atol=0)
    text = str(report)
    assert "num_hidden_layers: 2 -> 1" in text and "encoder.layer.1.output.dense.weight" in text
    assert "num_hidden_layers: 2 -> 1" in report._repr_markdown_()


def test_long_key_lists_are_shortened_in_print_not_in_the_report():
    report = hf.LoadReport("here", "BertModel", missing=[f"layer.{i}.weight" for i in range(hf.SHOWN + 5)])
    assert "layer.0.weight" in str(report) and f"layer.{hf.SHOWN}.weight" not in str(report)
    assert "... 5 more" in str(report) and "... 5 more" in report._repr_markdown_()
    assert len(report.missing) == hf.SHOWN + 5


def test_task_head_is_reported_as_newly_initialised(tiny_bert):
    path, saved = tiny_bert
    model, report = hf.load_pretrained(path, "AutoModelForMaskedLM")

    assert type(model).__name__ == "BertForMaskedLM" and report.model_class == "BertForMaskedLM"
    assert report.changed == {}
    assert report.missing and all(k.startswith("cls.predictions.") for k in report.missing)
    assert set(report.unexpected) == {"pooler.dense.weight", "pooler.dense.bias"}  # BertForMaskedLM has no pooler
    assert not report.clean
    torch.testing.assert_close(model.bert.encoder.layer[1].output.dense.weight, saved["encoder.layer.1.output.dense.weight"])


def test_shape_mismatch_is_reported(tiny_bert):
    path, _ = tiny_bert
    model, report = hf.load_pretrained(path, BertModel, overrides={"vocab_size": 120}, ignore_mismatched_sizes=True)

    assert model.embeddings.word_embeddings.weight.shape == (120, 32)
    assert [(k, tuple(a), tuple(b)) for k, a, b in report.mismatched] == [("embeddings.word_embeddings.weight", (99, 32), (120, 32))]


def test_unknown_key_names_close_matches(tiny_bert):
    path, _ = tiny_bert
    with pytest.raises(hf.UnknownConfigKeyError) as caught:
        hf.load_pretrained(path, overrides={"num_hiden_layers": 1})
    message = str(caught.value)
    assert isinstance(caught.value, KeyError)
    assert "'num_hiden_layers'" in message and "did you mean num_hidden_layers" in message and "\n" not in message


def test_wrong_value_type_is_rejected(tiny_bert):
    path, _ = tiny_bert
    with pytest.raises(ValueError, match="num_hidden_layers='two'.*expected int"):
        hf.load_pretrained(path, overrides={"num_hidden_layers": "two"})


def test_unknown_task_class(tiny_bert):
    path, _ = tiny_bert
    with pytest.raises(ValueError, match="did you mean AutoModelForMaskedLM"):
        hf.load_pretrained(path, "AutoModelForMaskedLLM")


def test_dotted_keys_reach_sub_configs():
    config = CLIPConfig(text_config={"num_hidden_layers": 4}, vision_config={"num_hidden_layers": 4})
    changed = hf.apply_overrides(config, {"text_config.num_hidden_layers": 2, "vision_config.attention_dropout": 0.0})
    assert config.text_config.num_hidden_layers == 2 and config.vision_config.num_hidden_layers == 4
    assert changed == {"text_config.num_hidden_layers": (4, 2)}  # attention_dropout was already 0.0: no change
    with pytest.raises(hf.UnknownConfigKeyError, match="did you mean text_config.num_hidden_layers"):
        hf.apply_overrides(config, {"text_config.num_hiden_layers": 1})
    with pytest.raises(hf.UnknownConfigKeyError, match="sub-config 'txt_config'.*did you mean text_config"):
        hf.apply_overrides(config, {"txt_config.num_hidden_layers": 1})


def test_dotted_key_on_a_config_without_sub_configs(tiny_bert):
    path, _ = tiny_bert
    with pytest.raises(hf.UnknownConfigKeyError, match="no sub-configs"):
        hf.load_pretrained(path, overrides={"text_config.num_hidden_layers": 1})


def test_hub_id_offline_fails_fast_with_the_alternative(tmp_path, monkeypatch, no_network):
    """Fast: with HF_HUB_OFFLINE=1 no connection is even attempted (no_network fails the test if it is)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(HubError) as caught:
        hf.load_pretrained("bert-base-uncased", "AutoModelForMaskedLM", overrides={"num_hidden_layers": 2})
    assert isinstance(caught.value, OSError)
    message = str(caught.value)
    assert "'bert-base-uncased'" in message and "offline" in message
    assert "save_pretrained" in message and "SmolLM2-135M" in message


def test_unreachable_hub_without_offline_flag_fails_fast(monkeypatch):
    """No HF_HUB_OFFLINE, but the hub cannot be reached: the short probe decides, and from_pretrained's
    download path (20-45 s of retries) is never entered."""
    import huggingface_hub
    import huggingface_hub.file_download
    import transformers.utils.hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(runtime, "HUB_HOST", "hub.invalid")  # RFC 2606: never resolves
    probes = []
    real_urlopen = runtime.urllib.request.urlopen

    def recording_urlopen(request, *args, timeout=None, **kwargs):
        probes.append((request.full_url, timeout))
        return real_urlopen(request, *args, timeout=timeout, **kwargs)

    def no_download(*args, **kwargs):
        raise AssertionError("the slow from_pretrained / hub download path was entered")

    monkeypatch.setattr(runtime.urllib.request, "urlopen", recording_urlopen)
    for cls in (hf.AutoConfig, hf.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", no_download)
    monkeypatch.setattr(transformers.utils.hub, "cached_file", no_download)
    monkeypatch.setattr(transformers.utils.hub, "cached_files", no_download, raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", no_download)
    with pytest.raises(HubError):
        hf.load_pretrained("google-bert/bert-base-uncased")
    assert len(probes) == 1, probes
    url, timeout = probes[0]
    assert url.startswith("https://hub.invalid") and timeout is not None and 0 < timeout <= 2.0, probes


def test_missing_local_directory_is_not_a_hub_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        hf.load_pretrained(tmp_path / "not_saved_yet")


def test_hub_id_in_the_local_cache_loads_offline(tiny_bert, tmp_path):
    """A hub id already in the hub cache loads while offline (from the cache, no network)."""
    path, saved = tiny_bert
    snapshot = tmp_path / "models--tiny-org--tiny-bert" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for file in path.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (tmp_path / "models--tiny-org--tiny-bert" / "refs").mkdir()
    (tmp_path / "models--tiny-org--tiny-bert" / "refs" / "main").write_text("0123abc")

    model, report = hf.load_pretrained("tiny-org/tiny-bert", overrides={"num_hidden_layers": 1}, cache_dir=tmp_path)
    assert report.changed == {"num_hidden_layers": (2, 1)}
    torch.testing.assert_close(model.embeddings.word_embeddings.weight, saved["embeddings.word_embeddings.weight"])


@pytest.mark.slow
def test_packaged_smollm2_loads_and_continues_text():
    torch.set_num_threads(2)
    model, tokenizer, report = hf.load_smollm2(attn_implementation="eager")

    assert type(model).__name__ == "LlamaForCausalLM" and report.clean
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.num_key_value_heads) == (30, 9, 3)
    assert model.config._attn_implementation == "eager"
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits  # B, T, V
        continuation = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert logits.shape == (1, ids["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert "Paris" in tokenizer.decode(continuation[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_smollm2_config_and_tokenizer_export_matches_the_gguf(tmp_path, monkeypatch):
    """The JSON export cached after the first load gives the GGUF's own config and tokenizer."""
    gguf = hf.smollm2_gguf_path()
    monkeypatch.setattr(hf.paths, "cache_dir", lambda: tmp_path)
    from_gguf_config, from_gguf_tokenizer = hf._smollm2_config_and_tokenizer(gguf)  # converts and exports
    assert (tmp_path / "hf").is_dir() and not list((tmp_path / "hf").glob(".tmp-*"))
    cached_config, cached_tokenizer = hf._smollm2_config_and_tokenizer(gguf)  # reads the export
    assert cached_config.to_diff_dict() == from_gguf_config.to_diff_dict()
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    assert cached_tokenizer(text)["input_ids"] == from_gguf_tokenizer(text)["input_ids"]
    assert (cached_tokenizer.bos_token, cached_tokenizer.eos_token) == (from_gguf_tokenizer.bos_token, from_gguf_tokenizer.eos_token)
