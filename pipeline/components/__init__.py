"""Custom TFX components this pipeline needs beyond the stock ones."""
