"""Constants shared by tests (importable because pytest puts tests/ on sys.path)."""

from tasks.demo_pool.generate import DemoPoolConfig

SMALL_POOL = DemoPoolConfig(n_samples=600, seed=11, n_concepts=20, min_per_concept=5, http_404_rate=0.03,
                            timeout_rate=0.01, truncated_rate=0.01, not_an_image_rate=0.01)

# pool_refresh settings that download the small pool quickly
FAST_DOWNLOAD = dict(slice_size=300, shard_size=100, processes=2, threads=8, image_size=256, timeout=5)
