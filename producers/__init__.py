"""The optimization path: cut traffic into segments, label them, dedup, write events.

``chunker`` cuts bytes with compiled FastCDC; ``hierarchy`` derives segment references and
the higher-level references that stand for runs of them; ``optimizer`` looks them up in the
store in batches, accounts exactly for what would cross the WAN, and appends the events.
"""
