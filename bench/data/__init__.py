"""Data sets: specs, torchvision and on-disk loaders, the embedded digits (datasets), and the
device data path that decodes once and augments whole batches on the device (devicedata).

May import: bench.core.
"""
