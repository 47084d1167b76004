"""unisam.runtime.cache: the in-memory LRU and the on-disk .npz embedding cache."""

import logging
import threading
import zipfile

import numpy as np
import pytest

from unisam.runtime.cache import DiskEmbeddingCache, Embedding, LRUCache


def _embedding(model_id: str = "edge_sam", digest: str = "ab12", seed: int = 0, extras: bool = True) -> Embedding:
    rng = np.random.default_rng(seed)
    return Embedding(
        features=rng.standard_normal((1, 8, 4, 4)).astype(np.float32),
        original_size=(480, 640),
        input_size=(768, 1024),
        model_id=model_id,
        image_digest=digest,
        extras={"dense_pe": rng.standard_normal((1, 8, 4, 4)).astype(np.float32), "ints": np.arange(3)}
        if extras
        else {},
    )


class _Blob:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


# --- Embedding ----------------------------------------------------------------------------------


def test_embedding_nbytes_and_validation():
    e = _embedding()
    assert e.nbytes == 8 * 16 * 4 + 8 * 16 * 4 + 3 * 8
    assert _embedding(extras=False).nbytes == 8 * 16 * 4
    assert isinstance(e.original_size, tuple)
    with pytest.raises(ValueError, match=r"\(1, C, h, w\)"):
        Embedding(np.zeros((8, 4, 4), np.float32), (1, 1), (1, 1), "m", "d")
    with pytest.raises(AttributeError):
        e.model_id = "other"  # frozen


# --- memory LRU ---------------------------------------------------------------------------------


def test_lru_eviction_by_bytes_and_recency():
    cache = LRUCache(max_bytes=100)
    cache.put(("m", "a"), _Blob(40))
    cache.put(("m", "b"), _Blob(40))
    assert cache.get(("m", "a")) is not None  # a is now more recent than b
    cache.put(("m", "c"), _Blob(40))  # 120 > 100: evicts the least recent, b
    assert ("m", "b") not in cache and ("m", "a") in cache and ("m", "c") in cache
    assert len(cache) == 2 and cache.nbytes == 80
    cache.put(("m", "d"), _Blob(100))  # needs everything
    assert len(cache) == 1 and cache.nbytes == 100
    cache.put(("m", "huge"), _Blob(101))  # larger than the cache: not stored, nothing evicted
    assert ("m", "huge") not in cache and ("m", "d") in cache


def test_lru_keys_by_model_and_digest_and_counts():
    cache = LRUCache()
    e = _embedding()
    cache.put(("m1", "x"), e)
    assert cache.get(("m1", "x")) is e
    assert cache.get(("m2", "x")) is None
    assert cache.get(("m1", "y")) is None
    assert (cache.hits, cache.misses) == (1, 2)
    assert ("m1", "x") in cache and cache.hits == 1  # membership is not a hit
    cache.put(("m1", "x"), _embedding(seed=1))  # replace: size accounted once
    assert len(cache) == 1 and cache.nbytes == e.nbytes
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.hits == cache.misses == 0


def test_lru_is_thread_safe():
    cache = LRUCache(max_bytes=50 * 10)

    def work(t: int) -> None:
        for i in range(300):
            cache.put(("m", f"{t}-{i % 80}"), _Blob(10))
            cache.get(("m", f"{t}-{(i * 7) % 80}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50 and cache.nbytes == 500
    assert cache.hits + cache.misses == 6 * 300


def test_negative_budget_rejected():
    with pytest.raises(ValueError):
        LRUCache(max_bytes=-1)


# --- disk ---------------------------------------------------------------------------------------


def _assert_same(a: Embedding, b: Embedding) -> None:
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.dtype == b.features.dtype
    assert (a.original_size, a.input_size, a.model_id, a.image_digest) == (
        b.original_size,
        b.input_size,
        b.model_id,
        b.image_digest,
    )
    assert list(a.extras) == list(b.extras)
    for k in a.extras:
        np.testing.assert_array_equal(a.extras[k], b.extras[k])
        assert a.extras[k].dtype == b.extras[k].dtype


def test_disk_round_trip_every_field(tmp_path):
    disk = DiskEmbeddingCache(tmp_path)
    e = _embedding(model_id="edge_sam/v1:fp16")  # odd characters are fine
    path = disk.put(e)
    assert path.is_file() and path.suffix == ".npz"
    assert ("edge_sam/v1:fp16", "ab12") in disk
    back = DiskEmbeddingCache(tmp_path).get("edge_sam/v1:fp16", "ab12")
    _assert_same(back, e)
    _assert_same(disk.get("edge_sam/v1:fp16", "ab12"), e)
    plain = _embedding(digest="cd34", extras=False)
    disk.put(plain)
    _assert_same(disk.get("edge_sam", "cd34"), plain)
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left


def test_disk_absent_entries(tmp_path):
    disk = DiskEmbeddingCache(tmp_path / "not-created-yet")
    assert disk.get("m", "ab") is None
    disk.put(_embedding(model_id="m", digest="ab"))
    assert disk.get("m", "ba") is None
    assert disk.get("other", "ab") is None  # other models live elsewhere
    disk.clear()
    assert disk.get("m", "ab") is None


def test_disk_refuses_entry_of_another_model(tmp_path, caplog):
    disk = DiskEmbeddingCache(tmp_path)
    src = disk.put(_embedding(model_id="sam_vit_b", digest="ab12"))
    dst = disk.path_for("edge_sam", "ab12")
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes())  # e.g. copied between caches
    with caplog.at_level(logging.WARNING):
        assert disk.get("edge_sam", "ab12") is None
    assert "sam_vit_b" in caplog.text
    renamed = disk.path_for("sam_vit_b", "ffff")
    renamed.write_bytes(src.read_bytes())  # a file under another digest's name
    assert disk.get("sam_vit_b", "ffff") is None
    assert disk.get("sam_vit_b", "ab12") is not None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "drop_member"])
def test_disk_refuses_corrupt_entries(tmp_path, caplog, damage):
    disk = DiskEmbeddingCache(tmp_path)
    path = disk.put(_embedding())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100 + data[100:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid zip whose header lists an extra that is missing
        with zipfile.ZipFile(path) as z:
            members = {n: z.read(n) for n in z.namelist() if n != "extra0.npy"}
        with zipfile.ZipFile(path, "w") as z:
            for name, blob in members.items():
                z.writestr(name, blob)
    with caplog.at_level(logging.WARNING):
        assert disk.get("edge_sam", "ab12") is None
    assert "ignoring" in caplog.text
    disk.put(_embedding())  # a new write repairs it
    _assert_same(disk.get("edge_sam", "ab12"), _embedding())


def test_disk_write_is_atomic_on_failure(tmp_path, monkeypatch):
    disk = DiskEmbeddingCache(tmp_path)
    good = _embedding()
    disk.put(good)

    def failing_savez(file, **arrays):  # fault injection: the disk fills up mid-write
        file.write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="No space"):
        disk.put(_embedding(seed=5))
    monkeypatch.undo()
    _assert_same(disk.get("edge_sam", "ab12"), good)  # the old entry is intact
    assert not list(tmp_path.rglob("*.tmp"))


def test_disk_rejects_object_arrays(tmp_path):
    good = _embedding()
    bad = Embedding(good.features, (1, 1), (1, 1), "m", "ab", {"x": np.array([object()])})
    with pytest.raises(ValueError, match="object"):
        DiskEmbeddingCache(tmp_path).put(bad)


def test_disk_rejects_path_like_digest(tmp_path):
    with pytest.raises(ValueError, match="image_digest"):
        DiskEmbeddingCache(tmp_path).path_for("m", "../../etc")
