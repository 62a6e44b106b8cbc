"""Every way a gpu profile's hub dataset fails gives one line naming the id, the cause and the fix, in < 5 s.

Offline, script-based, missing split/config/dataset and missing columns are produced for real
(HF_HUB_OFFLINE, local folders); "gated" by a local stand-in of the hub's HTTP API (HF_ENDPOINT)
answering 401 with the hub's GatedRepo error code, as huggingface.co does for facebook/pmd.
"""

import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from conftest import REPO_ROOT
from reproduce import hub

pytest.importorskip("datasets")


@pytest.fixture
def parquet_dataset(tmp_path):
    """A local dataset in the hub's parquet layout: splits train and test, one column ``text``."""
    root = tmp_path / "pq"
    (root / "data").mkdir(parents=True)
    pd.DataFrame({"text": ["one", "two"]}).to_parquet(root / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame({"text": ["three"]}).to_parquet(root / "data" / "test-00000-of-00001.parquet")
    return root


def _fails(kind, *args, **kwargs):
    t0 = time.perf_counter()
    with pytest.raises(hub.HubError) as info:
        data = hub.load_dataset(*args, **kwargs)
        next(iter(data))
    elapsed = time.perf_counter() - t0
    message = str(info.value)
    assert info.value.kind == kind, message
    assert "\n" not in message and len(message) < 400, message
    assert elapsed < 5, f"{kind}: {elapsed:.1f} s"
    return message


def test_a_local_parquet_folder_loads_without_the_hub(parquet_dataset, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert [r["text"] for r in hub.load_dataset(str(parquet_dataset), split="test")] == ["three"]


def test_offline(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _fails("offline", "emozilla/pg19", split="test", param="pg19_dataset", alternative="use profile=cpu")
    assert "'emozilla/pg19'" in message and "offline" in message and "profile=cpu" in message
    assert "-p pg19_dataset=" in message


def test_script_based(tmp_path):
    (tmp_path / "pg19").mkdir()
    (tmp_path / "pg19" / "pg19.py").write_text("import datasets\n")
    message = _fails("script", str(tmp_path / "pg19"), split="test", param="pg19_dataset")
    assert "loading script" in message and "parquet copy" in message and "pg19_dataset" in message


def test_missing_split(parquet_dataset):
    message = _fails("split", str(parquet_dataset), split="validation")
    assert "no split 'validation'" in message and "['train', 'test']" in message


def test_missing_config(parquet_dataset):
    message = _fails("config", str(parquet_dataset), "de-en", split="train")
    assert "no config 'de-en'" in message and "['default']" in message


def test_missing_dataset(tmp_path):
    message = _fails("missing", str(tmp_path / "nothing-here"), split="train", param="wikitext_dataset")
    assert "no such dataset" in message and "wikitext_dataset" in message


def test_missing_column(parquet_dataset):
    row = next(iter(hub.load_dataset(str(parquet_dataset), split="train")))
    with pytest.raises(hub.HubError, match=r"no column\(s\) \['image'\]; its columns are \['text'\]") as info:
        hub.require_columns(row, ["image", "text"], str(parquet_dataset))
    assert info.value.kind == "column"


class _GatedHub(http.server.BaseHTTPRequestHandler):
    """Answers every request as huggingface.co answers one for a gated repository without a login."""

    def _gated(self):
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to dataset facebook/pmd is restricted. You must have access to it "
                                            "and be authenticated to access it. Please log in.")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"error": "Access to dataset facebook/pmd is restricted"}).encode())

    do_GET = do_HEAD = do_POST = _gated

    def log_message(self, *args):
        pass


def test_gated(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(REPO_ROOT))
    code = (
        "import time; t = time.perf_counter()\n"
        "import reproduce.runtime as rt; rt.hub_offline = lambda *a, **k: False  # the stand-in hub answers\n"
        "from reproduce import hub\n"
        "try:\n"
        "    hub.load_dataset('facebook/pmd', 'coco', split='train', param='pmd_dataset')\n"
        "except hub.HubError as e:\n"
        "    print(e.kind); print(e); print(time.perf_counter() - t)\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr[-2000:]
    kind, message, elapsed = out.stdout.strip().splitlines()
    assert kind == "gated", message
    assert "hf auth login" in message and "facebook/pmd" in message and "pmd_dataset" in message
    assert float(elapsed) < 5


@pytest.mark.parametrize("kind", ["offline", "script", "column"])
def test_run_fails_before_the_kernel_starts(kind, tmp_path, parquet_dataset):
    """``python -m reproduce run`` opens the run's hub datasets first: one line on stderr, exit 1, < 5 s."""
    if kind == "script":
        (tmp_path / "pg19").mkdir()
        (tmp_path / "pg19" / "pg19.py").write_text("import datasets\n")
        dataset = str(tmp_path / "pg19")
    elif kind == "column":
        import pandas as pd

        pd.DataFrame({"book": ["x"]}).to_parquet(parquet_dataset / "data" / "train-00000-of-00001.parquet")
        dataset = str(parquet_dataset)
    else:
        dataset = "emozilla/pg19"
    env = {**os.environ, "REPRODUCE_SPECS": "pipeline_spec", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), str(REPO_ROOT)])}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "reproduce", "run", "pipeline", "-p", f"hub_dataset={json.dumps(dataset)}",
                          "--output-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: pipeline: dataset") and "hub_dataset" in lines[0], lines
    assert not (tmp_path / "out").exists()  # nothing started, nothing written
    # seconds beyond starting Python with the libraries the check needs (a loaded machine slows both alike)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import datasets, reproduce.__main__, reproduce.hub"], env=env, check=True, timeout=60)
    startup = time.perf_counter() - t0
    assert elapsed - startup < 5, (elapsed, startup)
