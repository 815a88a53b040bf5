"""The top of the house: one appliance and its service, built from every layer below.

``home`` opens an appliance home (its log, its store, its optimization path); ``replay``
rebuilds the store from the log; ``recover`` checks every log, cuts damage and takes back from
the peer what it holds; ``service`` is ``dssync serve``, split by concept into
``pairing`` (activation), ``snapshots`` (loading the peer's store, in one place), ``apply``
(the peer's log applied, in one loop), ``heartbeat``, ``control`` (the local endpoints) and
``verify`` (the store against its logs). Nothing below this package imports it.
"""

from dssync.appliance.home import Appliance
from dssync.appliance.replay import replay

__all__ = ["Appliance", "replay"]
