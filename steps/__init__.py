"""The pipeline steps: one module per MLproject entry point, plus `common`."""
