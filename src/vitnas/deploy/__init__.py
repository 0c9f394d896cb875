"""Taking a model away: export to ONNX / pt2 with a parity check, and timm-style validation."""
