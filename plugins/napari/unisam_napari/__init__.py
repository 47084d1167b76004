"""napari plugin for unisam."""
