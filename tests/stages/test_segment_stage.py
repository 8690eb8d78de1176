import pandas as pd
import pytest

from nanomorph.errors import NanomorphError
from nanomorph.stages.segment import best_encoder


def _rows(split, dice_by_encoder, n=8):
    return pd.DataFrame([{"encoder": e, "seed": 0, "n": n, "split": split, "image_index": i, "dice": d, "iou": d / 2}
                         for e, values in dice_by_encoder.items() for i, d in enumerate(values)])


def test_best_encoder_is_chosen_on_validation_rows_at_the_largest_n():
    validation = pd.concat([_rows("validation", {"simclr": [0.7, 0.8, 0.9], "random": [0.6, 0.6, 0.6]}),
                            _rows("validation", {"simclr": [0.1, 0.1, 0.1], "random": [0.9, 0.9, 0.9]}, n=1)])
    assert best_encoder(validation, ("random", "simclr")) == ("simclr", 8)
    # Ties go to the encoder listed first.
    tied = _rows("validation", {"a": [0.5], "b": [0.5]})
    assert best_encoder(tied, ("b", "a")) == ("b", 8)


def test_best_encoder_refuses_test_rows_and_empty_validation():
    with pytest.raises(ValueError, match="validation rows only"):
        best_encoder(_rows("test", {"simclr": [0.9]}), ("simclr",))
    with pytest.raises(NanomorphError, match="validation_fraction"):
        best_encoder(_rows("validation", {}).reindex(columns=["encoder", "n", "split", "dice"]), ("simclr",))
