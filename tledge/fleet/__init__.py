"""A fleet of devices sharing one gallery through a PostgreSQL hub (see docs/fleet.md).

The hub (``tledge.fleet.hub``) is the truth and orders every change; each device keeps its
SQLite + FAISS gallery as a replica (``tledge.fleet.replica``) with an outbox filled by
triggers in the same transaction as the change, and a ``SyncAgent`` (``tledge.fleet.sync``)
that pushes the outbox and replays the hub's change log. Needs ``pip install 'tledge[fleet]'``
(psycopg 3); never imports torch.
"""

from tledge.errors import TledgeError


class FleetError(TledgeError):
    """The hub cannot be reached or used, or a device's replica is inconsistent with it."""


__all__ = ["FleetError"]
