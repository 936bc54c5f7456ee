"""Training-free accelerators, each a set of diffusers hooks with ``apply_*`` / ``remove_*``."""
