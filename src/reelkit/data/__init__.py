"""Data: the procedural demo world, video I/O and datasets."""
