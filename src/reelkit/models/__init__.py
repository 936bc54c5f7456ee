"""The embedded default's networks: the text-to-video ``VideoDiT``, its text encoder, and the judge."""
