"""Data layer: sources returning canonical ``xarray.Dataset``s, zarr stores, torch windows.

Canonical forms (every source returns one of these; units in each variable's ``attrs["units"]``,
provenance in the dataset attrs ``source`` and ``kind``):

* weather:    dims ``time, lat, lon`` (+ ``level``); lat ascending, lon ascending and contiguous
              ([0, 360) for global grids; a regional grid crossing 0 keeps negative western
              longitudes); float32.
* timeseries: dims ``stay, time, feature`` (PhysioNet) or ``time, feature`` (tables); variable
              ``values`` float32 with NaN where missing, ``observed_mask`` uint8 (1 = observed),
              optional ``target_mask`` uint8 (1 = held-out evaluation target).
* images:     dims ``sample, channel, y, x``; ``image`` uint8 or float32, ``label`` int64 (sample),
              ``split`` int8 (0 = train, 1 = test; CF ``flag_values``/``flag_meanings`` attrs).
* medical:    dims ``slice, y, x``; ``image`` float32 (HU for CT), spacing/orientation in attrs.

Bad input raises :class:`datasets.errors.DataError` with one line naming the file.
``datasets`` imports no model code.
"""
