"""nanomorph: self-supervised analysis of nanomaterial morphologies in electron-microscopy images."""

__version__ = "0.1.0"
