"""Starting and stopping controllers and engines: :class:`Cluster` and its launchers."""
from .cluster import Cluster

__all__ = ["Cluster"]
