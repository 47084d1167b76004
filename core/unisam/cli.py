"""The ``unisam`` command: segment, everything, prelabel, export, weights list/pull, train, distill, evaluate, recipe."""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
from PIL import Image

from . import api, hub
from .runtime.everything import EverythingParams
from .track import LINK_OPTIONS
from .registry import get_card, get_label_card, list_label_models, list_models, require_license
from .train.commands import add_commands as add_training_commands
from .weights import WeightsNotFoundError, cache_dir, resolve_weight


def _numbers(text: str, names: str) -> tuple[float, ...]:
    parts = text.split(",")
    try:
        if len(parts) != names.count(",") + 1:
            raise ValueError
        return tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {names} (pixels, comma-separated), got {text!r}") from None


def _xy(text: str) -> tuple[float, float]:
    return _numbers(text, "X,Y")  # type: ignore[return-value]


def _box(text: str) -> tuple[float, float, float, float]:
    return _numbers(text, "X1,Y1,X2,Y2")  # type: ignore[return-value]


def _check_out(path: Path, overwrite: bool, image: bool = True) -> None:
    """Refuse an output path before any work is done: its folder must exist (none is created), it must
    not be a folder, an image needs a suffix Pillow can write, and an existing file needs --overwrite."""
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"cannot write {path}: the folder {folder} {what}; create it first (unisam makes no folders for you)")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; give a file name, e.g. {path / 'mask.png'}")
    if image and path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"cannot write {path}: {path.suffix or 'no suffix'} is not an image format; use .png")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it")


# A value that is a list of numbers starting with a minus sign ("-5,10"): argparse takes it for an option.
_NEGATIVE_LIST = re.compile(r"-(\d|\.\d)[\d.eE+-]*(,\s*[-+]?(\d|\.\d)[\d.eE+-]*)+")


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--point -5,10`` -> ``--point=-5,10``: argparse reads a single negative number as a value but a
    negative list as an unknown option, so such a value is attached to the long option before it."""
    out: list[str] = []
    for arg in argv:
        after_option = bool(out) and out[-1].startswith("--") and "=" not in out[-1] and "--" not in out
        if after_option and out[-1] != "--" and _NEGATIVE_LIST.fullmatch(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line on stderr (with where to find help), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _model(args) -> hub.Predictor:
    return hub.load_model(args.model, weights=args.weights, download=args.download)


def cmd_segment(args) -> None:
    out = Path(args.out)
    _check_out(out, args.overwrite)
    points = list(args.point) + list(args.negative)
    labels = [1] * len(args.point) + [0] * len(args.negative)
    result = api.segment(
        args.image,
        points=points or None,
        point_labels=labels or None,
        box=args.box,
        model=_model(args),
        multimask=args.multimask,
        tiles=args.tiles,
    )
    Image.fromarray(result.masks[0].astype(np.uint8) * 255).save(out)
    x1, y1, x2, y2 = (float(v) for v in result.boxes[0])
    print(
        f"wrote {out}: mask area {int(result.masks[0].sum())} px, box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}), "
        f"predicted IoU {float(result.scores[0]):.3f}"
    )


def cmd_everything(args) -> None:
    out = Path(args.out)
    _check_out(out, args.overwrite)
    if args.rle:
        _check_out(Path(args.rle), args.overwrite, image=False)
    given = {name: getattr(args, name) for name in EverythingParams.names()}
    params = {k: v for k, v in given.items() if v is not None}  # the rest: the model's defaults
    result = api.segment_everything(args.image, model=_model(args), tiles=args.tiles, progress=True, **params)
    labels = result.to_label_image()
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    Image.fromarray(labels.astype(dtype)).save(out)
    if args.rle:
        records = [
            {"segmentation": rle, "bbox_xyxy": [float(v) for v in box], "score": float(score)}
            for rle, box, score in zip(result.to_rle(), result.boxes, result.scores)
        ]
        Path(args.rle).write_text(json.dumps(records))
    print(f"wrote {out}: {len(result)} instances (label image, 0 = background)")


def cmd_prelabel(args) -> None:
    from . import prelabel

    source_path = Path(args.source)
    linking = {name: getattr(args, name) for name in LINK_OPTIONS if getattr(args, name) is not None}
    if linking and not args.track:
        raise ValueError(f"--{next(iter(linking)).replace('_', '-')} is a linking option: it needs --track")
    target = _prelabel_target(args.source)
    if target is not None:
        if args.track or args.format or args.root:
            raise ValueError(f"--track, --format and --root are for folders and COCO files; {args.source} "
                             "is written back to its host")
        source, sink = target(args.out, args.shard_size)
    elif args.track:
        if not source_path.is_dir():
            raise ValueError(f"--track needs a folder of sequences (videos, multi-page TIFFs, folders of frames); got {source_path}")
        source = prelabel.SequenceSource(source_path)
    elif source_path.is_dir():
        source = prelabel.FolderSource(source_path)
    elif source_path.suffix.lower() == ".json" and source_path.is_file():
        source = prelabel.CocoSource(source_path, args.root)
    else:
        raise ValueError(f"source {source_path} is neither an image folder nor a COCO .json file")
    if args.download:  # fetched once here, so the workers find the weights in the cache
        _model(args)
    given = {name: getattr(args, name) for name in EverythingParams.names()}
    everything = {k: v for k, v in given.items() if v is not None}
    if args.track:
        if args.tiles:
            raise ValueError("--tiles is not available with --track")
        steps: list = [prelabel.Track(args.model, args.weights, {**everything, **linking})]
    else:
        steps = [prelabel.SegmentEverything(args.model, args.weights, everything, args.tiles)]
    if args.vocabulary:
        steps.append(prelabel.Label(tuple(v.strip() for v in args.vocabulary.split(";")), args.label_model))
    if target is None:
        fmt = args.format or "coco"
        sink = {"coco": prelabel.CocoSink, "png": prelabel.PngSink}[fmt](args.out, 64 if args.shard_size is None else args.shard_size)
    job = prelabel.Job(source, steps, sink)
    report = job.run(args.engine, workers=args.workers, address=args.address, num_cpus=args.num_cpus, overwrite=args.overwrite)
    print(report.summary())
    if target is None:
        print(f"wrote {args.out} ({'annotations.json' if fmt == 'coco' else 'labels/'}; manifest.jsonl)")
    else:
        print(f"wrote field {args.out!r} of {args.source}")


PRELABEL_TARGETS = "unisam.prelabel_targets"  # entry-point group: a host's datasets as prelabel sources


def _prelabel_target(source: str):
    """For ``<host>:<name>`` (a host that registers an entry point in :data:`PRELABEL_TARGETS`, e.g.
    ``fiftyone:my-dataset``): a function ``(out, shard_size) -> (source, sink)``; else None (a path)."""
    host, colon, name = source.partition(":")
    if not colon or len(host) < 2 or Path(source).exists():  # "C:\\..." and existing paths are paths
        return None
    targets = {point.name: point for point in entry_points(group=PRELABEL_TARGETS)}
    if host not in targets:
        raise ValueError(f"unknown source {source!r}: not a path, and {host!r} is not a host "
                         f"(hosts: {', '.join(sorted(targets)) or 'none installed'})")
    try:
        make = targets[host].load()  # imports the host's SDK
    except ImportError as exc:
        raise ImportError(f"the {host} source needs {host} installed: pip install '.[{host}]' ({exc})") from None
    return lambda out, shard_size: make(name, out, shard_size)


def cmd_export(args) -> None:
    card = get_card(args.model)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"cannot export into {out}: the folder {out.parent} does not exist; create it first")
    if (out / "model.json").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds an export; pass --overwrite to replace it")
    if card.checkpoint is None:
        raise ValueError(f"model {card.name!r} has no PyTorch checkpoint; nothing to export")
    checkpoint = resolve_weight(card.checkpoint, path=args.checkpoint, download=args.download, model=card.name)
    hub.export_checkpoint(card, checkpoint, out)
    print(f"exported {card.name} to {out} (encoder.onnx, decoder.onnx, model.json)")


def cmd_weights_list(args) -> None:
    print(f"cache directory: {cache_dir()}")
    for name in list_models():
        card = get_card(name)
        if card.bundled is not None:
            size = sum(f.stat().st_size for f in card.bundled.glob("*.onnx")) / 1e6
            print(f"  {name:<16} bundled {size:8.1f} MB  {card.description}")
            continue
        files = [card.checkpoint] if card.checkpoint else list(card.onnx or ())
        present = all((cache_dir() / f.filename).is_file() for f in files)
        size = sum(f.size for f in files) / 1e6
        mark = "cached " if present else "missing"
        print(f"  {name:<16} {mark} {size:8.1f} MB  {card.description}")
    print("label models (open_clip arch/pretrained, for unisam.label):")
    for name in list_label_models():
        card = get_label_card(*name.split("/", 1))
        mark = "cached " if (cache_dir() / card.weights.filename).is_file() else "missing"
        licence = f"{card.license} (opt-in: {card.license_url})" if card.opt_in else card.license
        print(f"  {name:<34} {mark} {licence:<4} {card.description}")


def cmd_weights_pull(args) -> None:
    if "/" in args.model:  # a label model: open_clip's arch/pretrained
        label_card = get_label_card(*args.model.split("/", 1))
        require_license(label_card, args.accept_license)
        path = resolve_weight(label_card.weights, download=True, model=label_card.name)
        print(f"{label_card.name}: {path} (sha256 verified; licence {label_card.license})")
        return
    card = get_card(args.model)
    if card.bundled is not None:
        print(f"{card.name} ships with unisam ({card.bundled}); nothing to download")
        return
    files = [card.checkpoint] if card.checkpoint else list(card.onnx or ())
    for f in files:
        path = resolve_weight(f, download=True, model=card.name)
        print(f"{card.name}: {path} (sha256 verified)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unisam", description="Promptable segmentation (EdgeSAM family).")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--model", default=None, help="registered model (default: edgesam once its weights are cached, else unisam-tiny)")
        p.add_argument("--weights", default=None,
                       help="`unisam export` directory, or checkpoint file in the model's official layout "
                            "(the official one or your own fine-tuned weights)")
        p.add_argument("--download", action="store_true", help="download missing official weights")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")

    p = sub.add_parser("segment", help="segment one object from clicks and/or a box; write a mask PNG")
    p.add_argument("image")
    p.add_argument("--point", type=_xy, action="append", default=[], metavar="X,Y", help="foreground click")
    p.add_argument("--negative", type=_xy, action="append", default=[], metavar="X,Y", help="background click")
    p.add_argument("--box", type=_box, default=None, metavar="X1,Y1,X2,Y2")
    p.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None,
                   help="pick the best of 3 candidate masks (default: only for a single click)")
    p.add_argument("--tiles", action="store_true", help="large image: decode in the tile that holds the prompt")
    p.add_argument("--out", required=True, help="output mask PNG (0/255)")
    model_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("everything", help="automatic masks for the whole image; write a label PNG")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="output label image PNG (0 = background)")
    p.add_argument("--rle", default=None, help="also write instances as COCO RLE JSON")
    aliases = {"crop_n_layers": ["--crop-layers"], "min_mask_region_area": ["--min-area"]}
    for option in EverythingParams.options():
        flags = ["--" + option.name.replace("_", "-"), *aliases.get(option.name, [])]
        p.add_argument(*flags, dest=option.name, type=option.kind, default=None,
                       help=f"{option.help} (default: the model's; SAM {option.default:g})")
    p.add_argument("--tiles", action="store_true", help="large image: work in overlapping tiles")
    model_args(p)
    p.set_defaults(func=cmd_everything)

    p = sub.add_parser("prelabel", help="segment every image of a folder or COCO JSON, or track every sequence "
                                        "of a folder (local or on Ray); resumable")
    p.add_argument("source", help="an image folder (recursive), a COCO JSON (its images), or a host's dataset "
                                  "(fiftyone:NAME); with --track, a folder of sequences (videos, multi-page TIFFs, "
                                  "folders of frames)")
    p.add_argument("--out", required=True, help="output folder (created; a re-run resumes in it); for a host's "
                                                "dataset, the label field")
    p.add_argument("--root", default=None, help="folder the COCO file names are relative to (default: the JSON's)")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, each with its own model (ray engine only)")
    p.add_argument("--address", default=None, help="join this Ray cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the job (default: the machine's / the cluster's)")
    p.add_argument("--format", choices=["coco", "png"], default=None, help="COCO RLE JSON (default) or a label PNG per image")
    p.add_argument("--shard-size", type=int, default=None,
                   help="images per written shard, the unit of resuming (default 64; FiftyOne: 16 per database write)")
    p.add_argument("--vocabulary", default=None, help="also name the masks: class names separated by ';' (needs a CLIP label model)")
    p.add_argument("--label-model", default=None, help="CLIP label model, arch/pretrained or an export folder")
    for option in EverythingParams.options():
        p.add_argument("--" + option.name.replace("_", "-"), dest=option.name, type=option.kind, default=None,
                       help=f"{option.help} (default: the model's)")
    p.add_argument("--tiles", action="store_true", help="large images: work in overlapping tiles")
    p.add_argument("--track", action="store_true", help="track the objects of each sequence (unisam.track, automatic "
                                                        "mode): one id per object across its frames")
    p.add_argument("--method", choices=["hungarian", "laptrack"], default=None, help="--track: linking (laptrack: cells, divisions)")
    p.add_argument("--min-iou", type=float, default=None, help="--track: least mask IoU of a link (default 0.3)")
    p.add_argument("--feature-weight", type=float, default=None, help="--track: weight of embedding similarity (default 0.3)")
    p.add_argument("--max-gap", type=int, default=None, help="--track: frames an object may be missing and keep its id (default 2)")
    p.add_argument("--min-split", type=float, default=None, help="--track, laptrack: least fraction of a daughter in its mother (default 0.5)")
    model_args(p)
    p.set_defaults(func=cmd_prelabel)

    p = sub.add_parser("export", help="export a registered model's checkpoint to ONNX (needs torch)")
    p.add_argument("model")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file in the official layout, the official one or your own fine-tuned weights "
                        "(default: the official one from the cache)")
    p.add_argument("--out", required=True)
    p.add_argument("--download", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("weights", help="list or download official weights")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    wsub.add_parser("list", help="registered models and whether their files are cached").set_defaults(
        func=cmd_weights_list
    )
    pull = wsub.add_parser("pull", help="download a model's files into the cache (sha256-verified)")
    pull.add_argument("model")
    pull.add_argument("--accept-license", default=None, metavar="LICENCE",
                      help="accept this non-permissive licence of a label model's weights (e.g. apple-amlr)")
    pull.set_defaults(func=cmd_weights_pull)

    add_training_commands(sub)  # train | distill | evaluate | recipe (torch extra)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        args.func(args)
    except (ValueError, WeightsNotFoundError, ImportError, OSError) as exc:
        print(f"unisam: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
