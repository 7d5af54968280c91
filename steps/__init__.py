"""The pipeline steps: one module per MLproject entry point (`python -m steps.<name>`); shared code in `steps.lib`."""
