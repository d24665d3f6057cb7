"""Data layer: sources returning canonical xarray Datasets, zarr stores, torch windows."""
