"""A tiny model (``model.PixelGaussian``), metric (``metric.MeanBrightness``) and dataset (``data.Stripes``)
that bench loads through the entry points declared in this package's pyproject.toml.

Nothing here is imported by bench until a suite names it, so a broken or slow import in one plugin
does not affect suites that do not use it.
"""
