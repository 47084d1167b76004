"""Accuracy of unisam.label by example: k labelled examples per class, then every object of new scenes.

    python benchmarks/label_by_example.py                 # the bundled unisam-tiny's embeddings
    python benchmarks/label_by_example.py --model DIR     # any SAM export directory or registered name

Scenes: :func:`unisam.data.synthetic.generate_kind_mosaic` (2 x 2 tiles, one of each synthetic kind -
shapes, nuclei, cells, brightfield - in random places), so there are four classes and chance is 25%.
The examples are the first k objects of each kind in training mosaics (seeded); the test set is
``--scenes`` other mosaics. Prints accuracy per k and per class, and the time per labelled object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import unisam
from unisam.data.synthetic import KINDS, generate_kind_mosaic


def examples_of(rng: np.random.Generator, per_class: int) -> list[tuple[np.ndarray, unisam.Instances]]:
    examples, count = [], dict.fromkeys(KINDS, 0)
    while min(count.values()) < per_class:
        image, masks, kinds = generate_kind_mosaic(rng)
        keep = [i for i, k in enumerate(kinds) if count[k] < per_class]
        for i in keep:
            count[kinds[i]] += 1
        if keep:
            examples.append((image, unisam.Instances.from_masks(masks[keep], labels=[kinds[i] for i in keep])))
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="SAM model whose embeddings are pooled (default: unisam's)")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = unisam.get_model(args.model)
    test = [generate_kind_mosaic(np.random.default_rng([args.seed, 1, i])) for i in range(args.scenes)]
    objects = sum(len(kinds) for _, _, kinds in test)
    print(f"model {model.name}; {args.scenes} test mosaics, {objects} objects; chance 25%\n")
    print(f"{'k':>3} {'accuracy':>9} " + " ".join(f"{k:>11}" for k in KINDS) + f" {'ms/object':>10}")
    for k in (1, 5, 20):
        examples = examples_of(np.random.default_rng([args.seed, 0, k]), k)
        right, seen = dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0)
        started = time.perf_counter()
        for image, masks, kinds in test:
            out = unisam.label(image, unisam.Instances.from_masks(masks), examples=examples, segment_model=model)
            for got, kind in zip(out.labels, kinds):
                seen[kind] += 1
                right[kind] += got == kind
        elapsed = time.perf_counter() - started
        per_class = " ".join(f"{right[c] / max(seen[c], 1):>11.2f}" for c in KINDS)
        print(f"{k:>3} {sum(right.values()) / objects:>9.3f} {per_class} {1000 * elapsed / objects:>10.1f}")


if __name__ == "__main__":
    main()
