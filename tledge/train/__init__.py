"""The training side: backbones, fine-tuning, adaptation and export. Needs torch.

Install with ``pip install "tledge[train]"``.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in the runtime-only install
    from tledge.errors import TledgeError

    raise TledgeError(
        "the training side needs PyTorch: install it with `pip install \"tledge[train]\"`"
    ) from exc
