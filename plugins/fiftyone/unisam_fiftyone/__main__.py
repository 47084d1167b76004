"""``python -m unisam_fiftyone``: register unisam's zoo model source with FiftyOne (see the package)."""

import argparse

from . import register_zoo_source

parser = argparse.ArgumentParser(prog="python -m unisam_fiftyone", description=register_zoo_source.__doc__)
parser.add_argument("--overwrite", action="store_true", help="replace another source of the same name")
print(register_zoo_source(overwrite=parser.parse_args().overwrite))
