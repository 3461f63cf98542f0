//! tapbus-event: the bus contract as subscribers see it (the arrow bus --JSON--> consumer).
