"""nanomorph: self-supervised analysis of nanomaterial morphologies in electron-microscopy images.

From Python (nanomorph.api): `load_config`, `pretrain`, `load_encoder`, `save_encoder`, `extract_features`,
`probe_sweep`, `train_segmenter` and `predict_masks` are re-exported here, imported on first use so that
`import nanomorph` stays instant.
"""

__version__ = "0.1.0"

_API = ("load_config", "pretrain", "load_encoder", "save_encoder", "extract_features", "probe_sweep",
        "train_segmenter", "predict_masks")
__all__ = ["api", *_API]


def __getattr__(name: str):
    if name in _API or name == "api":
        import importlib

        api = importlib.import_module("nanomorph.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'nanomorph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
