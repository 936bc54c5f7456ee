"""Training recipes: thin scripts over the library, one per model, configured by YAML (``configs/``)."""
