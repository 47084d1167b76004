"""unisam's FiftyOne model-zoo source, shipped inside the ``unisam`` package (and in a checkout, at
``plugins/fiftyone/unisam_fiftyone``), and the helper that registers it with FiftyOne.

FiftyOne's ``foz.register_zoo_model_source`` only fetches: a GitHub repository or an archive URL
served over HTTP(S). A local directory (or a ``file://`` URL) is not accepted, so a checkout or an
installed package registers its source with :func:`register_zoo_source` instead::

    import fiftyone.zoo as foz
    import unisam_fiftyone

    unisam_fiftyone.register_zoo_source()      # or: python -m unisam_fiftyone
    model = foz.load_zoo_model("unisam")       # or load_zoo_model("unisam", model="edgesam")
    dataset.apply_model(model, label_field="masks", prompt_field="ground_truth")

It does what FiftyOne does for a downloaded source: copies ``zoo/`` (``manifest.json`` + the model
module) into ``fo.config.model_zoo_dir`` with the source's URL written into the manifest; here the URL
is the ``file://`` URI of this package's ``zoo/`` directory. FiftyOne then lists it among
``foz.list_zoo_model_sources()``, and ``foz.delete_zoo_model_source(url)`` removes it.

This module imports FiftyOne only inside :func:`register_zoo_source`; the FiftyOne plugin in
``plugins/fiftyone`` imports the label conversions from :mod:`unisam_fiftyone.zoo`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["register_zoo_source", "zoo_dir"]


def zoo_dir() -> Path:
    """The directory of the zoo source: ``manifest.json`` and the model module ``__init__.py``."""
    return Path(__file__).resolve().parent / "zoo"


def register_zoo_source(overwrite: bool = False) -> str:
    """Registers unisam's zoo model source with FiftyOne and returns its URL (a ``file://`` URI).

    Safe to call again: the source's files are copied anew each time (so an upgraded package or an
    edited checkout takes effect), keeping anything FiftyOne stored beside them. Raises
    ``ValueError`` when another source (e.g. a release archive registered with
    ``foz.register_zoo_model_source``) holds the same name, unless ``overwrite``.
    """
    import fiftyone as fo
    import fiftyone.zoo as foz
    import fiftyone.zoo.models as fozm

    source = zoo_dir()
    url = source.as_uri()
    manifest = fozm.ZooModelsManifest.from_json(str(source / "manifest.json"))
    target = Path(fo.config.model_zoo_dir) / manifest.subdir
    existing = target / "manifest.json"
    if existing.is_file():
        other = fozm.ZooModelsManifest.from_json(str(existing)).url
        if other != url and not overwrite:
            raise ValueError(
                f"a zoo model source named {manifest.name!r} is already registered from {other} "
                f"(in {target}); pass overwrite=True to replace it"
            )
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name == "manifest.json" or item.name.startswith((".", "__pycache__")):
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)
    manifest.url = url
    manifest.write_json(str(existing), pretty_print=True)
    # FiftyOne >= 1.2x memoizes the parsed manifests (model_zoo_manifest_cache_enabled); its own
    # register function drops the memo the same way.
    invalidate = getattr(fozm, "_invalidate_zoo_models_manifest", None)
    if invalidate is not None:
        invalidate()
    if url not in foz.list_zoo_model_sources():
        raise RuntimeError(f"FiftyOne did not pick up the zoo source copied to {target}")
    return url
