//! tapbus wire contracts. Pure code: nothing here touches a socket.
//!
//! The broker's flow, as far as bytes go: [`fstrm`] splits a Frame Streams byte stream into
//! frames and runs the reader's handshake; [`event`] turns one dnstap data frame (decoded
//! with the [`dnstap`] prost types) into one JSON event; [`subject`] names the bus subject
//! or topic the event is published on.
pub mod dnstap;
pub mod event;
pub mod fstrm;
pub mod subject;
