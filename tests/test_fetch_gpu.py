"""``python -m reproduce fetch --profile gpu`` against a stand-in of the Hugging Face hub (no network).

The stand-in (an HTTP server on 127.0.0.1, reached through ``HF_ENDPOINT``) answers the hub's API as
``huggingface_hub`` calls it: repository info with file sizes, the recursive tree, and
``resolve/<commit>/<file>`` with the commit and ETag headers. It serves every repository the gpu
profiles read by default, laid out as on the hub: Salesforce/wikitext and wmt/wmt14 with one folder per
config named in their dataset cards, emozilla/pg19 with ``data/<split>-*`` and no configs in its card,
lmms-lab/flickr30k, facebook/flava-full, and meta-llama/Llama-2-7b-hf, gated (a download without the
stand-in's token gets the hub's 401 ``GatedRepo`` answer) and holding a tiny LLaMA with a tokenizer.
The real ``snapshot_download`` fills a temporary Hugging Face cache; the server counts every file
download.
"""

import collections
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import urllib.parse

import pandas as pd
import pytest

from conftest import REPO_ROOT

pytest.importorskip("datasets")

TOKEN = "hf_standin"
WIKITEXT_CARD = """---
configs:
- config_name: wikitext-103-raw-v1
  data_files:
  - split: test
    path: wikitext-103-raw-v1/test-*
  - split: train
    path: wikitext-103-raw-v1/train-*
  - split: validation
    path: wikitext-103-raw-v1/validation-*
- config_name: wikitext-2-raw-v1
  data_files:
  - split: train
    path: wikitext-2-raw-v1/train-*
---
# wikitext stand-in
"""
WMT_CARD = """---
configs:
- config_name: de-en
  data_files:
  - split: train
    path: de-en/train-*
  - split: validation
    path: de-en/validation-*
  - split: test
    path: de-en/test-*
- config_name: fr-en
  data_files:
  - split: train
    path: fr-en/train-*
---
"""
FLICKR_CARD = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: data/test-*\n---\n"


def _parquet(**columns) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(columns).to_parquet(buffer)
    return buffer.getvalue()


def _tiny_llama(tmp_path_factory) -> dict[str, bytes]:
    """A 2-layer LLaMA (hidden 16, vocabulary 99) and a word-level tokenizer, saved as the hub holds them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("the cat sat on a mat".split())}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """(kind, id) -> {"files": {path: bytes}, "gated": bool, "wanted": the files a gpu run needs}."""
    text = lambda *rows: _parquet(text=list(rows))  # noqa: E731
    pairs = lambda *de: _parquet(translation=[{"de": d, "en": d.upper()} for d in de])  # noqa: E731
    llama = _tiny_llama(tmp_path_factory)
    out = {
        ("dataset", "Salesforce/wikitext"): {"README.md": WIKITEXT_CARD.encode(),
                                             "wikitext-103-raw-v1/train-00000-of-00002.parquet": text("w1", "w2"),
                                             "wikitext-103-raw-v1/train-00001-of-00002.parquet": text("w3"),
                                             "wikitext-103-raw-v1/validation-00000-of-00001.parquet": text("v1"),
                                             "wikitext-103-raw-v1/test-00000-of-00001.parquet": text("t1"),
                                             "wikitext-2-raw-v1/train-00000-of-00001.parquet": text("small")},
        ("dataset", "wmt/wmt14"): {"README.md": WMT_CARD.encode(),
                                   **{f"de-en/{s}-00000-of-00001.parquet": pairs(f"{s} eins", f"{s} zwei")
                                      for s in ("train", "validation", "test")},
                                   "fr-en/train-00000-of-00001.parquet": pairs("un")},
        ("dataset", "emozilla/pg19"): {"README.md": b"# PG-19, a card without configs\n",
                                       "data/train-00000-of-00002.parquet": text("book 1"),
                                       "data/train-00001-of-00002.parquet": text("book 2"),
                                       "data/validation-00000-of-00001.parquet": text("book 3"),
                                       "data/test-00000-of-00001.parquet": text("book 4", "book 5")},
        ("dataset", "lmms-lab/flickr30k"): {"README.md": FLICKR_CARD.encode(),
                                            "data/test-00000-of-00001.parquet": _parquet(image=[b"png"], caption=[["a cat"]])},
        ("model", "facebook/flava-full"): {"config.json": b"{}", "pytorch_model.bin": b"weights",
                                           "flax_model.msgpack": b"flax weights", "vocab.txt": b"[PAD]\n"},
        ("model", "meta-llama/Llama-2-7b-hf"): {**llama, "pytorch_model.bin": b"the same weights, pickled"},
    }
    not_needed = {"wikitext-103-raw-v1/test-00000-of-00001.parquet", "wikitext-2-raw-v1/train-00000-of-00001.parquet",
                  "fr-en/train-00000-of-00001.parquet", "data/train-00000-of-00002.parquet",
                  "data/train-00001-of-00002.parquet", "data/validation-00000-of-00001.parquet",
                  "flax_model.msgpack"}
    return {key: {"files": files, "gated": key[1].startswith("meta-llama/"),
                  "wanted": {f for f in files if f not in not_needed and not (key[1].startswith("meta") and f.endswith(".bin"))}}
            for key, files in out.items()}


class _StandInHub(http.server.BaseHTTPRequestHandler):
    """The hub's API for ``repo_info``, ``list_repo_tree`` and ``hf_hub_download``, from ``self.server.repos``."""

    def _repo(self, parts: list[str]) -> tuple[tuple[str, str], list[str]] | None:
        kind = "dataset" if parts[0] in ("datasets",) else "model"
        parts = parts[1:] if parts[0] in ("datasets", "models") else parts
        key = (kind, "/".join(parts[:2]))
        return (key, parts[2:]) if key in self.server.repos else None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        parts = [urllib.parse.unquote(p) for p in urllib.parse.urlsplit(self.path).path.strip("/").split("/")]
        api = parts[0] == "api"
        found = self._repo(parts[1:] if api else parts)
        if found is None:
            return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        key, rest = found
        repo = self.server.repos[key]
        sha = hashlib.sha1(repr(sorted(repo["files"].items())).encode()).hexdigest()
        oid = {p: hashlib.sha1(b).hexdigest() for p, b in repo["files"].items()}
        if api and (not rest or rest[0] == "revision"):  # repo_info, with file sizes
            siblings = [{"rfilename": p, "size": len(b), "blobId": oid[p]} for p, b in repo["files"].items()]
            info = {"id": key[1], "sha": sha, "private": False, "gated": "manual" if repo["gated"] else False,
                    "siblings": siblings}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        if api and rest[0] == "tree":
            tree = [{"type": "file", "path": p, "size": len(b), "oid": oid[p]} for p, b in repo["files"].items()]
            return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
        name = "/".join(rest[2:])  # resolve/<revision>/<path>
        if rest[:1] != ["resolve"] or name not in repo["files"]:
            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
        if repo["gated"] and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo", "X-Error-Message":
                              f"Access to model {key[1]} is restricted. You must have access to it and be authenticated."})
        if self.command == "GET":
            self.server.downloads[(key[1], name)] += 1
        self._send(200, repo["files"][name], {"X-Repo-Commit": sha, "ETag": f'"{oid[name]}"',
                                              "Content-Type": "application/octet-stream"})

    do_GET = do_HEAD = _handle

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stand_in_hub(repos):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandInHub)
    server.repos = repos
    server.downloads = collections.Counter()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _fetch(server, tmp_path, *args, token=True):
    """``python -m reproduce fetch --profile gpu ARGS`` with the hub at the stand-in, caches under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "REPRODUCE_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HOME=str(tmp_path / "hf"),
               REPRODUCE_CACHE=str(tmp_path / "cache"), HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(REPO_ROOT),
               **({"HF_TOKEN": TOKEN} if token else {}))
    return subprocess.run([sys.executable, "-m", "reproduce", "fetch", "--profile", "gpu", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fetched(stand_in_hub, repos, tmp_path_factory):
    """Every gpu item fetched twice into one temporary cache: (first output, second output, cache folder)."""
    tmp = tmp_path_factory.mktemp("fetch")
    stand_in_hub.downloads.clear()
    first = _fetch(stand_in_hub, tmp)
    after_first = collections.Counter(stand_in_hub.downloads)
    second = _fetch(stand_in_hub, tmp)
    return first, after_first, second, collections.Counter(stand_in_hub.downloads), tmp


def test_first_fetch_downloads_each_file_a_run_needs_once_and_no_other(fetched, repos):
    from reproduce.plan import human_bytes

    first, downloads, *_ = fetched
    assert first.returncode == 0, first.stderr
    wanted = {(repo_id, f) for (_, repo_id), r in repos.items() for f in r["wanted"]}
    assert set(downloads) == wanted, "\n".join(sorted(map(str, set(downloads) ^ wanted)))
    assert set(downloads.values()) == {1}, downloads
    print(first.stdout)  # the table, for the record (pytest -s)
    rows = first.stdout.splitlines()
    for (kind, repo_id), r in repos.items():
        size = human_bytes(sum(len(r["files"][f]) for f in r["wanted"]))
        assert sum(repo_id in row and f"{size} {len(r['wanted']):>6}  {size} to download" in row
                   for row in rows) == 1, (repo_id, size, rows)
        assert sum(repo_id in row and "downloaded" in row for row in rows) == 1, (repo_id, rows)
    assert "wmt/wmt14 de-en: [train, validation, test]" in first.stdout
    assert "Salesforce/wikitext wikitext-103-raw-v1: [train, validation]" in first.stdout
    assert "meta-llama/Llama-2-7b-hf (gated)" in first.stdout


def test_second_fetch_downloads_nothing_and_says_cached(fetched, repos):
    _, after_first, second, after_second, _ = fetched
    assert second.returncode == 0, second.stderr
    assert after_second == after_first
    item_rows = [row for row in second.stdout.splitlines() if any(repo_id in row for _, repo_id in repos)]
    assert len(item_rows) == len(repos) and all(row.endswith("cached") for row in item_rows), item_rows
    assert "0 B downloaded now" in second.stdout


@pytest.fixture
def offline_cache(fetched, monkeypatch, no_network):
    """This process reads the fetched caches with HF_HUB_OFFLINE=1 and any network connection failing the test."""
    from huggingface_hub import constants

    tmp = fetched[-1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REPRODUCE_CACHE", str(tmp / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp / "hf" / "hub"))  # read at import from HF_HOME
    return tmp


@pytest.mark.parametrize("dataset_id, config, split, column, expected", [
    ("emozilla/pg19", None, "test", "text", ["book 4", "book 5"]),
    ("Salesforce/wikitext", "wikitext-103-raw-v1", "train", "text", ["w1", "w2", "w3"]),
    ("wmt/wmt14", "de-en", "validation", "translation", [{"de": "validation eins", "en": "VALIDATION EINS"},
                                                         {"de": "validation zwei", "en": "VALIDATION ZWEI"}]),
])
@pytest.mark.parametrize("streaming", [True, False])
def test_offline_runs_read_the_fetched_copy(offline_cache, dataset_id, config, split, column, expected, streaming):
    from reproduce import hub

    rows = hub.load_dataset(dataset_id, config, split, streaming=streaming)
    assert [r[column] for r in rows] == expected


def test_offline_preflight_of_every_gpu_run_passes_and_an_unfetched_split_names_the_fetch(offline_cache):
    from reproduce import config, hub

    for paper in config.available_papers():
        params = config.resolve(paper, "gpu")
        sources = config.get_spec(paper).hub_datasets(params) or []
        assert hub.preflight(sources) == [], paper
    with pytest.raises(hub.HubError, match=r"was not fetched \(python -m reproduce fetch --profile gpu") as info:
        hub.load_dataset("Salesforce/wikitext", "wikitext-103-raw-v1", "test")
    assert info.value.kind == "offline"


def test_offline_tova_loads_the_fetched_gated_model_and_its_tokenizer(offline_cache):
    from reproduce.tova import experiments

    loaded = experiments.load_model("meta-llama/Llama-2-7b-hf", "cpu")
    assert loaded.model.config.num_hidden_layers == 2 and loaded.parameters > 0
    assert loaded.tokenizer("the cat sat")["input_ids"][-3:] == [3, 4, 5]


def test_a_gated_model_without_a_login_fails_in_one_line_and_the_rest_is_fetched(stand_in_hub, tmp_path):
    out = _fetch(stand_in_hub, tmp_path, "tova", token=False)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    url = f"http://127.0.0.1:{stand_in_hub.server_port}/meta-llama/Llama-2-7b-hf"
    assert lines == [f"error: tova: model 'meta-llama/Llama-2-7b-hf' is gated: accept its terms at {url} and log in "
                     "(`hf auth login`, or set HF_TOKEN), then fetch again"], out.stderr
    assert any("emozilla/pg19" in row and "downloaded" in row for row in out.stdout.splitlines()), out.stdout


def test_items_merge_splits_skip_local_paths_and_refuse_unknown_parameters(tmp_path):
    from reproduce import config, hub_fetch

    found, skipped = hub_fetch.items(["transformer", "tova"], "gpu", {"model": str(tmp_path)})
    assert [(i.kind, i.id, i.config, i.splits) for i in found] == [
        ("dataset", "wmt/wmt14", "de-en", ("train", "validation", "test")), ("dataset", "emozilla/pg19", None, ("test",))]
    assert skipped == [f"tova: model={tmp_path} is a local path, not fetched"]
    assert hub_fetch.items(["flava"], "cpu") == ([], [])
    with pytest.raises(config.ParamError, match="stesp"):
        hub_fetch.items(["retnet"], "gpu", {"stesp": 3})


def test_a_local_folder_with_one_folder_per_config_reads_the_config(tmp_path, monkeypatch, no_network):
    """wmt/wmt14's layout copied without its card: ``de-en/train-*.parquet`` is the de-en config's train split."""
    from reproduce import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for config, rows in (("de-en", ["guten tag"]), ("fr-en", ["bonjour"])):
        (tmp_path / config).mkdir()
        pd.DataFrame({"text": rows}).to_parquet(tmp_path / config / "train-00000-of-00001.parquet")
    assert [r["text"] for r in hub.load_dataset(str(tmp_path), "de-en", "train")] == ["guten tag"]
