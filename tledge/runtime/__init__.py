"""The torch-free runtime: embed with ONNX Runtime, enroll and recognise with a gallery.

Never imports torch (checked by a test and by import-linter contracts in pyproject.toml).
"""

from tledge.runtime.embedder import Embedder, Embedding, l2_normalize
from tledge.runtime.gallery import EnrollResult, Gallery, Match, ModelChangedError
from tledge.runtime.images import load_image
from tledge.runtime.recognizer import Recognition, Recognizer
from tledge.runtime.sources import Frame, FrameSource, open_source

__all__ = [
    "Embedder", "Embedding", "EnrollResult", "Frame", "FrameSource", "Gallery", "Match",
    "ModelChangedError", "Recognition", "Recognizer", "l2_normalize", "load_image", "open_source",
]
