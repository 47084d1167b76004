"""Every Python block of README.md runs as written, offline (empty weight cache: the bundled model), from
the repository root, without deprecated spellings; what the blocks print is what they claim."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture
def run_block(tmp_path, monkeypatch):
    """Execute one block in a fresh namespace; return the namespace and what it printed."""
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    import unisam.hub

    monkeypatch.setattr(unisam.hub, "_shared", {})  # a fresh process: nothing loaded, nothing cached

    def run(code: str) -> tuple[dict, str]:
        namespace: dict = {"__name__": "__readme__"}
        out = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.filterwarnings("error", category=DeprecationWarning, module=r"__readme__|unisam.*")
            exec(compile(code, "README.md", "exec"), namespace)
        return namespace, out.getvalue()

    return run


def test_the_readme_has_the_blocks_this_test_checks():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) == 6
    assert "point_labels=[1, 0]" in blocks[0] and "box=" in blocks[0]  # point, negative click and box prompts


def test_block_1_segments_the_clicked_nucleus_three_ways(run_block):
    ns, printed = run_block(python_blocks(ROOT / "README.md")[0])
    result, one, everything = ns["result"], ns["one"], ns["everything"]
    assert len(result) == 3 and result.labels == [None, None, "nucleus"]
    assert result.masks[:, 303, 334].all()  # every prompt's mask holds the clicked pixel
    assert result.masks[1].sum() <= result.masks[0].sum()  # the background click can only shrink it
    np.testing.assert_array_equal(one.masks[0], result.masks[0])
    assert len(everything) > 10 and f"{len(everything)} objects" in printed
    assert ns["label_image"].max() == 3 and len(ns["rles"]) == 3


def test_block_2_refines_with_the_previous_logits(run_block):
    ns, _ = run_block(python_blocks(ROOT / "README.md")[1])
    pred, refined = ns["pred"], ns["refined"]
    assert pred.masks.shape[0] == 3 and refined.masks.shape[0] == 1
    assert refined.masks[0][303, 334] and not refined.masks[0][300, 300]


def test_block_3_follows_a_nucleus_through_the_stack(run_block):
    ns, printed = run_block(python_blocks(ROOT / "README.md")[2])
    found = ns["found"]
    assert len(found) == 12 and found[6].ids.tolist() == [1]
    assert sum(len(frame) for frame in found) >= 3
    assert printed.strip() == str([len(frame) for frame in found])


def test_block_4_tracks_three_nuclei_prompted_and_automatically(run_block):
    ns, printed = run_block(python_blocks(ROOT / "README.md")[3])
    tracks, auto, scene = ns["tracks"], ns["auto"], ns["scene"]
    assert all(frame.ids.tolist() == [1, 2, 3] for frame in tracks) and len(tracks) == 10
    assert "{1: (0, 9), 2: (0, 9), 3: (0, 9)}" in printed
    for t, (mine, truth) in enumerate(zip(tracks, scene.truth)):  # id k follows the k-th nucleus
        for k in range(3):
            inter = (mine.masks[k] & truth.masks[k]).sum()
            assert inter / (mine.masks[k] | truth.masks[k]).sum() > 0.6, (t, k)
    for k in range(3):  # automatic: each nucleus is one track
        ids = {int(np.bincount(ns["labels"][t][truth.masks[k]]).argmax()) for t, truth in enumerate(scene.truth)}
        assert len(ids) == 1 and 0 not in ids, (k, ids)
    assert ns["table"].shape[1] == 4 and set(ns["table"][:, 0].astype(int)) == set(auto.ids().tolist())


def test_block_5_names_objects_by_example(run_block):
    ns, printed = run_block(python_blocks(ROOT / "README.md")[4])
    found, truth = ns["found"], ns["truth"]
    assert len(found) == len(truth) and set(found.labels) <= set(truth)
    assert np.mean([a == b for a, b in zip(found.labels, truth)]) > 0.35  # four kinds: chance is 0.25
    assert str(found.labels[:4]) in printed and len(found.label_topk[0]) == 4


def test_block_6_splits_the_nuclei_with_the_watershed_mode(run_block):
    ns, printed = run_block(python_blocks(ROOT / "README.md")[5])
    nuclei = ns["nuclei"]
    assert len(nuclei) >= 20 and f"{len(nuclei)} nuclei" in printed  # the example's image: about 30 nuclei
    assert nuclei.masks.sum(0).max() == 1  # one label per pixel: a watershed partition, no overlaps
    assert ((nuclei.scores > 0.5) & (nuclei.scores <= 1)).all()  # mean foreground probability, above the cut
