"""``unisam train | distill | evaluate | instance-head | recipe``: the training side of the command line
(needs torch).

``add_commands(subparsers)`` adds the five subcommands to the ``unisam`` argparse parser; each sets
``func`` to a handler taking the parsed arguments. Torch and the training modules are imported only
when a handler runs, so the inference-only install keeps a fast, torch-free CLI.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

DEFAULT_PHASE2_LR = 5e-4


def _dataset_args(p: argparse.ArgumentParser, prefix: str = "", required: bool = True) -> None:
    """``--coco JSON --images DIR | --sa1b DIR | --synthetic N`` (with ``prefix`` for a second set)."""
    group = p.add_mutually_exclusive_group(required=required)
    dash = f"--{prefix}-" if prefix else "--"
    what = "validation " if prefix else ""
    group.add_argument(f"{dash}coco", default=None, metavar="JSON", help=f"{what}COCO instances JSON")
    group.add_argument(f"{dash}sa1b", default=None, metavar="DIR", help=f"{what}SA-1B folder (one JSON per image)")
    group.add_argument(f"{dash}synthetic", type=int, default=None, metavar="N", help=f"{what}N synthetic images")
    p.add_argument(f"{dash}images", default=None, metavar="DIR", help=f"image folder of the {what}COCO JSON")


def _source(args, prefix: str = "", seed_offset: int = 0):
    from .data import open_source

    key = f"{prefix}_" if prefix else ""
    values = {k: getattr(args, key + k) for k in ("coco", "images", "sa1b", "synthetic")}
    if values["coco"] is None and values["sa1b"] is None and values["synthetic"] is None:
        return None
    return open_source(**values, seed=args.seed + seed_offset, size=args.synthetic_size)


def _loop_args(p: argparse.ArgumentParser, steps: int, lr: float) -> None:
    p.add_argument("--out", required=True, help="output folder (checkpoint, log.jsonl, model)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    p.add_argument("--epochs", type=float, default=None, help="instead of --steps: passes over the dataset")
    p.add_argument("--batch-images", type=int, default=4)
    p.add_argument("--max-instances", type=int, default=16, help="prompts per image per step")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--synthetic-size", type=int, default=256, help="side of synthetic images (px)")
    p.add_argument("--no-progress", action="store_true")
    _dataset_args(p)
    _dataset_args(p, "val", required=False)


def _config(cls, args, n_images: int):
    """A config dataclass from the parsed loop arguments (``--epochs`` sets the step count)."""
    steps = args.steps
    if args.epochs is not None:
        steps = max(1, round(args.epochs * n_images / args.batch_images))
    values = {"steps": steps, "batch_images": args.batch_images, "max_instances": args.max_instances,
              "lr": args.lr, "seed": args.seed}
    return replace(cls(), **values)


def _model_args(p: argparse.ArgumentParser, name: str, help_what: str) -> None:
    p.add_argument(f"--{name}", required=True, metavar="DIR|NAME",
                   help=f"{help_what}: a trained-model folder (arch.json + model.safetensors) "
                   "or a registered model name")
    p.add_argument(f"--{name}-checkpoint", default=None, metavar="FILE",
                   help="official checkpoint for a registered model name (else the weight cache)")


def load_torch_model(spec: str, checkpoint: str | None = None):
    """A torch ``Sam`` from a trained-model folder, or a registered model with its official weights."""
    from ..models import build_sam, load_checkpoint
    from ..registry import get_card
    from ..weights import resolve_weight
    from .supervised import load_trained

    if Path(spec).is_dir():
        return load_trained(spec)
    card = get_card(spec)
    if card.checkpoint is None:
        raise ValueError(f"model {card.name!r} has no PyTorch checkpoint (it is published as ONNX only)")
    model = build_sam(card.arch)
    load_checkpoint(model, resolve_weight(card.checkpoint, path=checkpoint, model=card.name))
    return model.eval()


def _arch(text: str, image_size: int | None):
    """An ArchSpec from a recipe preset (``teacher``/``student``), a registered name or a JSON file."""
    from ..registry import ArchSpec, get_card
    from . import recipe

    if text in recipe.PRESETS:
        spec = recipe.PRESETS[text]
    elif Path(text).is_file():
        spec = ArchSpec.from_dict(json.loads(Path(text).read_text()))
    else:
        spec = get_card(text).arch
    return replace(spec, image_size=image_size) if image_size else spec


def _set_threads(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def cmd_train(args) -> None:
    import torch

    from ..models import build_sam
    from .supervised import SupervisedConfig, init_from_scratch, train_supervised

    _set_threads(args)
    source, val = _source(args), _source(args, "val", seed_offset=1)
    torch.manual_seed(args.seed)
    model = build_sam(_arch(args.arch, args.image_size))
    if args.init:
        model.load_state_dict(load_torch_model(args.init, args.init_checkpoint).state_dict())
    else:
        init_from_scratch(model)
    config = replace(_config(SupervisedConfig, args, len(source)), decode_iters=args.decode_iters)
    summary = train_supervised(model, source, args.out, config, val_source=val, resume=args.resume,
                               progress=not args.no_progress)
    print(json.dumps(summary, indent=2))


def cmd_distill(args) -> None:
    import torch

    from .distill import DecoderDistillConfig, EncoderDistillConfig, distill_decoder, distill_encoder, make_student
    from .supervised import load_trained

    _set_threads(args)
    source, val = _source(args), _source(args, "val", seed_offset=1)
    teacher = load_torch_model(args.teacher, args.teacher_checkpoint)
    out = Path(args.out)
    if args.student_init:
        student = load_trained(args.student_init)
    else:
        torch.manual_seed(args.seed)
        preset = _arch(args.student, None)
        student = make_student(teacher, preset.encoder, preset.encoder_kwargs)
    if args.phase in ("1", "both"):
        config = _config(EncoderDistillConfig, args, len(source))
        print(json.dumps(distill_encoder(teacher, student, source, out / "phase1", config, val_source=val,
                                         resume=args.resume, progress=not args.no_progress), indent=2))
    if args.phase in ("2", "both"):
        config = replace(_config(DecoderDistillConfig, args, len(source)),
                         lr=args.lr if args.phase == "2" else args.phase2_lr)
        print(json.dumps(distill_decoder(teacher, student, source, out / "phase2", config, val_source=val,
                                         resume=args.resume, progress=not args.no_progress), indent=2))


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate, format_table

    _set_threads(args)
    source = _source(args)
    if args.weights:
        from ..hub import load_model

        model = load_model(weights=args.weights, threads=args.threads)
        name = args.weights
    else:
        model = load_torch_model(args.model, args.checkpoint)
        name = args.model
    result = evaluate(model, source, prompts=args.prompts, refine=args.refine, max_images=args.max_images,
                      max_instances=args.max_instances, seed=args.seed, progress=not args.no_progress)
    print(format_table({name: result}))
    print(f"{result['instances']} instances in {result['images']} images")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def cmd_recipe(args) -> None:
    from .recipe import run_recipe

    run_recipe(args.out, seed=args.seed, budget_scale=args.budget_scale, threads=args.threads,
               progress=not args.no_progress, plan=args.plan)


def cmd_instance_head(args) -> None:
    from .instance_head import InstanceHeadConfig, train_instance_head

    given = {"steps": args.steps, "images": args.images}
    config = InstanceHeadConfig(seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    result = train_instance_head(args.model, config, threads=args.threads, overwrite=args.overwrite,
                                 progress=not args.no_progress)
    print(f"instance head written to {Path(args.model) / 'instances.onnx'}: loss {result['loss_first']:.3f} "
          f"at the start -> {result['loss_last']:.3f} at the end")


def add_commands(subparsers) -> None:
    """Add ``train``, ``distill``, ``evaluate``, ``instance-head`` and ``recipe`` to the ``unisam`` CLI's
    subparsers."""
    p = subparsers.add_parser("train", help="train a SAM-architecture model on instance masks (needs torch)")
    p.add_argument("--arch", default="teacher",
                   help="architecture: recipe preset (teacher, student), registered model name or ArchSpec JSON")
    p.add_argument("--image-size", type=int, default=None, help="override the architecture's input size")
    p.add_argument("--init", default=None, metavar="DIR|NAME", help="start from these weights")
    p.add_argument("--init-checkpoint", default=None, metavar="FILE")
    p.add_argument("--decode-iters", type=int, default=3, help="decode rounds per step (1 + correction clicks)")
    _loop_args(p, steps=2000, lr=2e-3)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("distill", help="EdgeSAM distillation of a student from a teacher (needs torch)")
    _model_args(p, "teacher", "the teacher")
    p.add_argument("--student", default="student", help="student encoder: recipe preset or ArchSpec JSON")
    p.add_argument("--student-init", default=None, metavar="DIR", help="start from this trained student (e.g. phase 1)")
    p.add_argument("--phase", choices=("1", "2", "both"), default="both",
                   help="1: encoder-only distillation; 2: prompt-in-the-loop; both: 1 then 2")
    p.add_argument("--phase2-lr", type=float, default=DEFAULT_PHASE2_LR, help="phase-2 learning rate with --phase both")
    _loop_args(p, steps=1000, lr=2e-3)
    p.set_defaults(func=cmd_distill)

    p = subparsers.add_parser("evaluate", help="mIoU with box / centre-point prompts and refinement clicks")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", default=None, metavar="DIR", help="an ONNX export folder (runs on the runtime)")
    src.add_argument("--model", default=None, metavar="DIR|NAME",
                     help="a trained-model folder or registered name (torch)")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="official checkpoint for --model NAME")
    p.add_argument("--prompts", nargs="+", default=["box", "center"], choices=("box", "center"))
    p.add_argument("--refine", type=int, default=2, help="refinement clicks after the first prompt")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--max-instances", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--synthetic-size", type=int, default=256)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    _dataset_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("instance-head", help="train the foreground / distance head of segment-everything's "
                              "watershed mode for an export folder (needs torch)")
    p.add_argument("--model", required=True, metavar="DIR", help="an ONNX export folder (its encoder stays frozen)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1500)")
    p.add_argument("--images", type=int, default=None, help="synthetic training images (default 1200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace the folder's instances.onnx")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_instance_head)

    p = subparsers.add_parser("recipe", help="reproduce the shipped small model end to end (about 1 h on 2 cores)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-scale", type=float, default=1.0, help="scale every phase's steps (0.05 for a smoke run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plan", default="shipped",
                   help="shipped (the plan that made the bundled model) or boxes-background (a variant under study)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_recipe)
