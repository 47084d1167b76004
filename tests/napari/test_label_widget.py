"""'Name objects' in a real viewer: names of committed objects in the Labels layer's features, by
example (objects the user named at commit) or from a typed vocabulary; the oracle is unisam.label."""


import numpy as np
from napari.utils.notifications import notification_manager

import unisam
from unisam.data.synthetic import generate_kind_mosaic
from unisam_napari._widget import UnisamWidget

PLUGIN, WIDGET = "unisam", "Segment with unisam"


def commit_mask(widget: UnisamWidget, viewer, mask: np.ndarray, name: str = "") -> int:
    """Commit ``mask`` as the user would after segmenting it, with ``name`` in the name box."""
    widget.object_name.value = name
    current = viewer.layers["current_object"]
    current.data[...] = 0
    current.data[mask] = 1
    return widget.commit()


def setup(make_napari_viewer):
    image, masks, kinds = generate_kind_mosaic(np.random.default_rng(21), (192, 192))
    viewer = make_napari_viewer()
    viewer.add_image(image, name="mosaic", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return viewer, widget, image, masks, kinds


def test_name_objects_by_example_from_the_users_names(make_napari_viewer, qtbot):
    viewer, widget, image, masks, kinds = setup(make_napari_viewer)
    named, unnamed = {}, []
    for k, (mask, kind) in enumerate(zip(masks, kinds)):
        if sum(v == kind for v in named.values()) < 2:
            named[commit_mask(widget, viewer, mask, kind)] = kind
        else:
            unnamed.append((commit_mask(widget, viewer, mask), k))
    widget.object_name.value = ""
    widget.name_objects()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    table = viewer.layers["committed_objects"].features.set_index("index")
    for i, kind in named.items():  # the user's names are untouched
        assert table.loc[i, "name"] == kind and table.loc[i, "named_by"] == "user"
    data = viewer.layers["committed_objects"].data
    examples_masks = [data == i for i in sorted(named)]
    examples = [(image, unisam.Instances.from_masks(np.stack(examples_masks), labels=[named[i] for i in sorted(named)]))]
    targets = unisam.Instances.from_masks(np.stack([data == i for i, _ in unnamed]))
    expected = unisam.label(image, targets, examples=examples)
    assert [table.loc[i, "name"] for i, _ in unnamed] == expected.labels
    assert all(table.loc[i, "named_by"] == "unisam" for i, _ in unnamed)
    np.testing.assert_allclose([table.loc[i, "name_score"] for i, _ in unnamed], expected.label_scores, rtol=1e-5)


def test_name_objects_from_a_typed_vocabulary(make_napari_viewer, qtbot, clip_export):
    viewer, widget, image, masks, _ = setup(make_napari_viewer)
    ids = [commit_mask(widget, viewer, m) for m in masks[:5]]
    widget.vocabulary.value = "nucleus, nuclei\ncell\ndebris"
    widget.label_model.value = str(clip_export)
    widget.name_objects()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    table = viewer.layers["committed_objects"].features.set_index("index")
    assert set(table.loc[ids, "name"]) <= {"nucleus", "cell", "debris"}
    data = viewer.layers["committed_objects"].data
    expected = unisam.label(image, unisam.Instances.from_masks(np.stack([data == i for i in ids])),
                            ["nucleus, nuclei", "cell", "debris"], model=str(clip_export))
    assert list(table.loc[ids, "name"]) == expected.labels
    # above the 'unknown below' threshold only: the others lose unisam's name
    widget.unknown.value = float(np.median(expected.label_scores))
    threshold = widget.unknown.value  # as the spin box rounds it
    widget.name_objects()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    table = viewer.layers["committed_objects"].features.set_index("index")
    strict = [name if score >= threshold else None for name, score in zip(expected.labels, expected.label_scores)]
    assert None in strict and any(strict)
    assert [name if isinstance(name, str) else None for name in table.loc[ids, "name"]] == strict


def test_name_objects_explains_what_is_missing(make_napari_viewer):
    viewer, widget, _, masks, _ = setup(make_napari_viewer)
    start = len(notification_manager.records)
    widget.name_objects()  # nothing committed
    commit_mask(widget, viewer, masks[0])
    widget.name_objects()  # no vocabulary, nobody named
    widget.vocabulary.value = "cat\nCat"
    widget.name_objects()  # a class twice
    errors = [r.message for r in notification_manager.records[start:]]
    assert any("no unnamed committed objects" in m for m in errors)
    assert any("type a vocabulary, or give a few objects a name" in m for m in errors)
    assert any("twice" in m for m in errors)
    assert widget.worker is None
