"""The controller: Hub bookkeeping and scheduling as pure state machines, plus the
socket shell (:mod:`.server`) and heartbeat monitor (:mod:`.heartbeat`) around them."""
