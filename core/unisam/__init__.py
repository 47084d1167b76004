"""unisam: promptable segmentation core (EdgeSAM family) on ONNX Runtime."""
