"""The controller: the Hub, the request paths and the queries, built from parts.

Pure state machines (:mod:`.hub`, :mod:`.scheduler`, :mod:`.dependency_book`,
:mod:`.retries`, :mod:`.recovery`, :mod:`.merge`) hold the bookkeeping; parts
(:mod:`.clients`, :mod:`.registry`, :mod:`.router`, :mod:`.queries`) carry it out on
sockets; a layout assembles them around one :mod:`.loop`: :mod:`.one_process` (the
default) or :mod:`.split_hub` with its :mod:`.split_path` processes.
"""
