"""tledge: transfer learning at the edge.

The training side (``tledge.train``) needs torch; the runtime side (``tledge.runtime``) never
imports it. This package root imports neither, so ``import tledge`` is cheap everywhere.
"""

__version__ = "0.1.0"
