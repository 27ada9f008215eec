"""Cross-cutting pieces every package may import: the user-facing error and the workbench's paths.

It imports nothing else in the project, so a model or a datamodule never pulls in the MLflow glue
just to raise an error.
"""
