"""Deployable nanomorph models as MLflow pyfunc models (`mlflow.pyfunc.load_model`, `mlflow models serve`).

Input contract (both models): a pandas DataFrame with one row per image and one of two columns per row:

* ``path``  - a string, the path of an image file readable by the process that runs the model (PNG 8/16-bit,
  TIFF, JPEG; gray or colour, colour becomes luminance), decoded by `nanomorph.data.io.read_image`;
* ``image`` - a 2-D array (or nested lists, as JSON sends it) of gray intensities in [0, 1]; uint8 / uint16
  arrays (in-process callers) are scaled by their type's range. Any other value range is refused.

Either column may be absent; in a row exactly one of them must be set. Images may have any size: each model
resizes to the size it was trained at, the segmenter maps its mask back to the input's size.

Outputs, one row per input row, in input order:

* classifier (`NanowireClassifier`): ``class`` (the most probable class) and ``prob_<class>`` for every
  class (they sum to 1); with params ``{"return_embeddings": true}`` also ``embedding`` (list of floats: the
  frozen encoder's pooled features the probe sees).
* segmenter (`NanowireSegmenter`): ``density`` (wire pixel fraction), ``percolates`` (the paper's DBSCAN rule,
  eps=2, min_samples=2, on the mask at the input's resolution), ``objects`` (8-connected components of the
  mask, `skimage.measure.label`, of at least `segment.object_min_size` pixels), ``height``, ``width`` and
  ``mask`` (nested lists of 0/1 ints, the input's height x width; params ``{"return_mask": false}`` leaves it
  out, which keeps HTTP answers small). With params ``{"tiled": true}`` the segmenter does not resize: it
  segments the image at its own resolution by overlapping tiles whose halo covers the receptive field (the
  same mask as one pass over the whole image, in bounded memory for any size, e.g. 4096 x 4096), for images
  whose pixel size matches the training images'.
"""

from nanomorph.serving.inputs import images_from_frame, resize_for_model
from nanomorph.serving.models import NanowireClassifier, NanowireSegmenter

__all__ = ["NanowireClassifier", "NanowireSegmenter", "images_from_frame", "resize_for_model"]
