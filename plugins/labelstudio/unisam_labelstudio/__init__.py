"""Label Studio ML backend for unisam."""
