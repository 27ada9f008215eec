"""childsafe-runtime: the torch-free consumer of childsafe-workbench bundles (onnxruntime, numpy, Pillow)."""
