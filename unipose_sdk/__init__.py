"""unipose-sdk: fast, practical inference for UniPose-style multimodal human-pose models.

The public surface is re-exported here; everything else is an implementation detail.
"""

from unipose_sdk._version import __version__
from unipose_sdk import errors

__all__ = ["__version__", "errors"]
