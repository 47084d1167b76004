"""The prelabel operator ``@unisam/unisam/prelabel`` (issue #19) on a real FiftyOne dataset: one
job shared by several delegated workers, each taking one shard of the samples.

Oracle: ``unisam.segment_everything`` on the same image files."""

import fiftyone as fo
import pytest

from unisam_fiftyone.prelabel import shard_of


def test_every_sample_is_in_exactly_the_shard_of_its_id(dataset):
    dataset.add_samples([fo.Sample(filepath=f"/nowhere/{i}.png") for i in range(40)])
    ids = dataset.values("id")
    for shards in (1, 2, 3, 7):
        got = {shard: set(shard_of(dataset, shard, shards).values("id")) for shard in range(shards)}
        assert got == {shard: {i for i in ids if int(i, 16) % shards == shard} for shard in range(shards)}
    for shard, shards in ((2, 2), (-1, 2), (0, 0), (0, "2")):
        with pytest.raises(ValueError, match="shard must be in 0..shards-1"):
            shard_of(dataset, shard, shards)
