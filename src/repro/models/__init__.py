"""Building, saving and loading SDXL-format pipelines."""
