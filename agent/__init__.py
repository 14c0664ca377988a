"""The real host agent (``healthmon agent``): host health via psutil and per-device block latency.

``agent.health`` builds the host's ``health`` messages, ``agent.latency`` holds
the block latency sources (BCC, libbpf-tools ``biolatency``, ``/proc/diskstats``)
behind one small interface, and ``agent.main`` runs the loop that sends both.
"""
