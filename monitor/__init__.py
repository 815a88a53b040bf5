"""Offset-lag monitoring: how far behind every path of a pair is, and appliance-style alarms.

The data's path, in modules: ``lag`` measures each path (records, bytes, seconds from the
logs' own append times); ``evaluate`` turns a window of measurements into a Burrow-like status
with its evidence; ``alarms`` applies rising/reset thresholds with minimum durations and keeps
incidents across restarts; ``notify`` delivers raise and clear events (command, webhook) under
a rate limit; ``metrics`` exposes it all to Prometheus; ``monitor`` runs the loop inside
``dssync serve``.
"""
