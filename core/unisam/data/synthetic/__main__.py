"""``python -m unisam.data.synthetic [preview.png [seed]]``: a contact sheet of 16 samples of each kind."""

import sys

from PIL import Image

from . import KINDS, SyntheticDataset, contact_sheet

data = SyntheticDataset(16 * len(KINDS), seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
samples = sorted((data[i] for i in range(len(data))), key=lambda s: KINDS.index(s.kind))
Image.fromarray(contact_sheet(samples, cols=8)).save(sys.argv[1] if len(sys.argv) > 1 else "preview.png")
