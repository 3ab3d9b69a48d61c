"""What verifying a decoded-image cache entry costs (every byte hashed on every read) against the decode it protects.

    source scripts/bootstrap.sh && python scripts/cache_hash_cost.py

Writes 1,000 Flowers102-sized JPEGs (500 px shorter side) and its caches into a temporary folder, decodes them at
ViT-B-32's 224 px, times the verification of that entry (about 150 MB) and of one the size of Flowers102's test split
(6,149 images, about 925 MB), and removes everything. The page cache is warm: a cold read is bound by the disk.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def best_of(n: int, fn) -> float:
    """The shortest of ``n`` timings of ``fn()``, in seconds."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLIPFT_DATA"] = str(Path(tmp) / "data")
        from clipft_utils import data as D
        rng, root = np.random.default_rng(0), Path(tmp) / "photos"
        for c in range(10):
            (root / f"class{c}").mkdir(parents=True)
            for i in range(100):
                small = Image.fromarray(rng.integers(0, 256, (25, 33, 3), dtype=np.uint8))
                small.resize((667, 500), Image.BICUBIC).save(root / f"class{c}" / f"{i}.jpg", quality=90)
        ds = D.get_dataset(str(root), split=[98, 1])
        ds.check()
        start = time.perf_counter()
        train = D.get_split(ds, "train", 224, (0.5,) * 3, (0.5,) * 3)
        decode = time.perf_counter() - start
        entry = Path(os.environ["CLIPFT_DATA"]) / "cache" / "decoded" / train.source_key
        parts = [entry.with_name(f"{entry.name}_{p}") for p in ("images.npy", "labels.npy", "meta.json")]
        mb, verify = parts[0].stat().st_size / 1e6, best_of(3, lambda: D._problem(*parts))
        print(f"{len(train)} images at 224 px: entry {mb:.0f} MB; decode {decode:.1f} s ({len(train) / decode:.0f} "
              f"img/s); verification {verify:.3f} s = {mb / verify:.0f} MB/s ({100 * verify / decode:.1f} % of the decode)")
        big = rng.integers(0, 256, (6149, 224, 224, 3), dtype=np.uint8)
        D._cached("cost-6149", lambda: (big, np.zeros(len(big), np.int64)))
        del big
        read = best_of(3, lambda: D._cached("cost-6149", lambda: 1 / 0))   # a rebuild would fail: this only reads
        mb = (Path(os.environ["CLIPFT_DATA"]) / "cache" / "decoded" / "cost-6149_images.npy").stat().st_size / 1e6
        print(f"6149 images at 224 px: entry {mb:.0f} MB; a read (verification) {read:.2f} s = {mb / read:.0f} MB/s; "
              f"decoding them at the rate above takes about {6149 * decode / len(train):.0f} s")


if __name__ == "__main__":
    main()
