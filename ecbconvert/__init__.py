"""ecbconvert: fuse, export, verify and benchmark ECBSR super-resolution models.

The package root stays import-light (no torch, no TensorFlow) so that the CLI starts fast.
"""

__version__ = "0.1.0"
