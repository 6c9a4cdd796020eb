"""The engine: one Python process that runs what clients send, in a persistent namespace.

Under MPI, ``comm``, ``rank`` and ``size`` describe the engines' communicator; they are
``None`` on an engine started without MPI.
"""
comm = None
rank = None
size = None
