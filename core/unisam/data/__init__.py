"""Data that needs no torch: :mod:`unisam.data.synthetic`, the synthetic scene generator (NumPy, SciPy,
Pillow) that training, the napari sample data, tests and benchmarks share."""
