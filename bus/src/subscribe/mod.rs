//! Subscribe: bus --> consumer. Every mode hands out deliveries with an ack handle that the
//! consumer calls only after its own downstream write succeeded.
