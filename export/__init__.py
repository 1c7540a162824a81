"""torch → ONNX export of model components (build side; never imported by the runtime)."""
