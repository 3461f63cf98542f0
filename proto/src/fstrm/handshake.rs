//! The arrow frames -> handshake -> data frames: [`ReaderHandshake`], the reader side of the
//! Frame Streams handshake, a pure state machine fed every control frame (and told about every
//! data frame) that answers with a [`Step`] or a [`HandshakeError`]. The policy it implements
//! is described in the [module docs](super).

use super::frame::{ControlFrame, ControlType};

/// Which handshake mode the peer chose with its first control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// READY/ACCEPT/START … STOP/FINISH: the reader answers.
    Bidirectional,
    /// START … STOP: the reader never writes.
    Unidirectional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitFirst,
    /// ACCEPT sent; waiting for START (bidirectional only).
    AwaitStart,
    Streaming(Mode),
    Stopped(Mode),
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::AwaitFirst => "awaiting READY or START",
            State::AwaitStart => "awaiting START after ACCEPT",
            State::Streaming(_) => "streaming data frames",
            State::Stopped(Mode::Bidirectional) => "stopped (bidirectional stream after STOP)",
            State::Stopped(Mode::Unidirectional) => "awaiting START after STOP",
        }
    }
}

/// What the caller must do after a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Write this control frame to the peer now (ACCEPT after READY).
    Reply(ControlFrame),
    /// START accepted; data frames follow.
    Started,
    /// An unknown control type after START: ignore it (the caller may count it).
    Ignored,
    /// STOP received. `reply` is FINISH in bidirectional mode (write it, then close), `None` in
    /// unidirectional mode (close a socket, or keep reading a file: another START may follow).
    Finished {
        /// The FINISH frame to write, if any.
        reply: Option<ControlFrame>,
    },
}

/// A handshake violation by the peer. The connection (or file) should be abandoned.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// READY or START offered only content types other than ours.
    #[error("content type mismatch: {got} offered {offered}, this reader only accepts {expected}")]
    ContentTypeMismatch {
        /// The control frame that offered them (READY or START).
        got: ControlType,
        /// The offered content types, lossily decoded, quoted and escaped.
        offered: String,
        /// Our content type, quoted and escaped.
        expected: String,
    },
    /// A control frame that is not allowed in the current state.
    #[error("unexpected {got} control frame while {state}")]
    UnexpectedControl {
        /// The control type received.
        got: ControlType,
        /// The state it arrived in.
        state: &'static str,
    },
    /// A data frame arrived before the START control frame.
    #[error(
        "data frame received before START: the sender did not perform the Frame Streams handshake"
    )]
    DataBeforeStart,
    /// A data frame arrived after STOP (and before any new START).
    #[error("data frame received after STOP")]
    DataAfterStop,
}

/// Quotes and escapes a byte string for a log line.
fn quote(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// The reader side of the Frame Streams handshake (see the [module docs](super) for the policy).
#[derive(Debug, Clone)]
pub struct ReaderHandshake {
    content_type: &'static [u8],
    state: State,
}

impl ReaderHandshake {
    /// A handshake accepting `content_type` (normally [`DNSTAP_CONTENT_TYPE`](super::DNSTAP_CONTENT_TYPE)).
    #[must_use]
    pub fn new(content_type: &'static [u8]) -> Self {
        ReaderHandshake {
            content_type,
            state: State::AwaitFirst,
        }
    }

    fn mismatch(&self, frame: &ControlFrame) -> HandshakeError {
        let offered = frame
            .content_types
            .iter()
            .map(|ct| quote(ct))
            .collect::<Vec<_>>()
            .join(", ");
        HandshakeError::ContentTypeMismatch {
            got: frame.kind,
            offered,
            expected: quote(self.content_type),
        }
    }

    fn unexpected(&self, frame: &ControlFrame) -> HandshakeError {
        HandshakeError::UnexpectedControl {
            got: frame.kind,
            state: self.state.describe(),
        }
    }

    fn start(&mut self, frame: &ControlFrame, mode: Mode) -> Result<Step, HandshakeError> {
        if !frame.matches_content_type(self.content_type) {
            return Err(self.mismatch(frame));
        }
        self.state = State::Streaming(mode);
        Ok(Step::Started)
    }

    /// Feeds one control frame received from the peer.
    ///
    /// # Errors
    ///
    /// A [`HandshakeError`] if the frame breaks the reader policy (see the [module docs](super)); the
    /// state is left unchanged and the caller should close the connection without replying.
    pub fn on_control(&mut self, frame: &ControlFrame) -> Result<Step, HandshakeError> {
        match (self.state, frame.kind) {
            (State::AwaitFirst, ControlType::Ready) => {
                if !frame.matches_content_type(self.content_type) {
                    return Err(self.mismatch(frame));
                }
                self.state = State::AwaitStart;
                Ok(Step::Reply(ControlFrame::new(
                    ControlType::Accept,
                    Some(self.content_type),
                )))
            }
            (State::AwaitFirst | State::Stopped(Mode::Unidirectional), ControlType::Start) => {
                self.start(frame, Mode::Unidirectional)
            }
            (State::AwaitStart, ControlType::Start) => self.start(frame, Mode::Bidirectional),
            (State::Streaming(mode), ControlType::Stop) => {
                self.state = State::Stopped(mode);
                let reply = match mode {
                    Mode::Bidirectional => Some(ControlFrame::new(ControlType::Finish, None)),
                    Mode::Unidirectional => None,
                };
                Ok(Step::Finished { reply })
            }
            (State::Streaming(_), ControlType::Unknown(_)) => Ok(Step::Ignored),
            _ => Err(self.unexpected(frame)),
        }
    }

    /// Checks that a data frame (or an oversize one) may arrive now.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::DataBeforeStart`] before START, [`HandshakeError::DataAfterStop`]
    /// after STOP.
    pub fn on_data(&self) -> Result<(), HandshakeError> {
        match self.state {
            State::Streaming(_) => Ok(()),
            State::Stopped(_) => Err(HandshakeError::DataAfterStop),
            State::AwaitFirst | State::AwaitStart => Err(HandshakeError::DataBeforeStart),
        }
    }

    /// The mode chosen by the peer, once its first control frame has been accepted.
    #[must_use]
    pub fn mode(&self) -> Option<Mode> {
        match self.state {
            State::AwaitFirst => None,
            State::AwaitStart => Some(Mode::Bidirectional),
            State::Streaming(mode) | State::Stopped(mode) => Some(mode),
        }
    }

    /// True between an accepted START and the following STOP.
    #[must_use]
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fstrm::DNSTAP_CONTENT_TYPE;
    use bytes::Bytes;

    // ---- handshake --------------------------------------------------------------------------

    fn ctl(kind: ControlType, ct: Option<&[u8]>) -> ControlFrame {
        ControlFrame::new(kind, ct)
    }

    #[test]
    fn bidirectional_handshake() {
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        assert_eq!(hs.mode(), None);
        assert_eq!(hs.on_data(), Err(HandshakeError::DataBeforeStart));
        let step = hs.on_control(&ctl(ControlType::Ready, Some(DNSTAP_CONTENT_TYPE)));
        let accept = ctl(ControlType::Accept, Some(DNSTAP_CONTENT_TYPE));
        assert_eq!(step, Ok(Step::Reply(accept.clone())));
        assert_eq!(
            accept.content_types,
            vec![Bytes::from_static(DNSTAP_CONTENT_TYPE)]
        );
        assert_eq!(hs.mode(), Some(Mode::Bidirectional));
        assert!(!hs.is_streaming());
        assert_eq!(hs.on_data(), Err(HandshakeError::DataBeforeStart));
        assert_eq!(
            hs.on_control(&ctl(ControlType::Start, Some(DNSTAP_CONTENT_TYPE))),
            Ok(Step::Started)
        );
        assert!(hs.is_streaming());
        assert_eq!(hs.on_data(), Ok(()));
        assert_eq!(
            hs.on_control(&ctl(ControlType::Unknown(9), None)),
            Ok(Step::Ignored)
        );
        assert_eq!(
            hs.on_control(&ctl(ControlType::Stop, None)),
            Ok(Step::Finished {
                reply: Some(ctl(ControlType::Finish, None))
            })
        );
        assert!(!hs.is_streaming());
        assert_eq!(hs.on_data(), Err(HandshakeError::DataAfterStop));
        assert!(matches!(
            hs.on_control(&ctl(ControlType::Start, None)),
            Err(HandshakeError::UnexpectedControl {
                got: ControlType::Start,
                ..
            })
        ));
    }

    #[test]
    fn ready_content_type_negotiation() {
        // READY with no content type: ACCEPT still carries ours.
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        assert_eq!(
            hs.on_control(&ctl(ControlType::Ready, None)),
            Ok(Step::Reply(ctl(
                ControlType::Accept,
                Some(DNSTAP_CONTENT_TYPE)
            )))
        );
        // READY listing several types including ours: ACCEPT carries only ours.
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let ready = ControlFrame {
            kind: ControlType::Ready,
            content_types: vec![
                Bytes::from_static(b"protobuf:other"),
                Bytes::from_static(DNSTAP_CONTENT_TYPE),
            ],
        };
        assert_eq!(
            hs.on_control(&ready),
            Ok(Step::Reply(ctl(
                ControlType::Accept,
                Some(DNSTAP_CONTENT_TYPE)
            )))
        );
        // READY with only another type: mismatch, no reply.
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let err = hs
            .on_control(&ctl(ControlType::Ready, Some(b"protobuf:other")))
            .unwrap_err();
        assert_eq!(
            err,
            HandshakeError::ContentTypeMismatch {
                got: ControlType::Ready,
                offered: "\"protobuf:other\"".into(),
                expected: "\"protobuf:dnstap.Dnstap\"".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "content type mismatch: READY offered \"protobuf:other\", this reader only accepts \"protobuf:dnstap.Dnstap\""
        );
        assert_eq!(hs.mode(), None);
    }

    #[test]
    fn start_after_accept_checks_content_type() {
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        hs.on_control(&ctl(ControlType::Ready, None)).unwrap();
        assert!(matches!(
            hs.on_control(&ctl(ControlType::Start, Some(b"x"))),
            Err(HandshakeError::ContentTypeMismatch {
                got: ControlType::Start,
                ..
            })
        ));
        assert_eq!(
            hs.on_control(&ctl(ControlType::Start, None)),
            Ok(Step::Started)
        );
        assert_eq!(hs.mode(), Some(Mode::Bidirectional));
    }

    #[test]
    fn unidirectional_rules() {
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        // Unknown control and STOP before START are errors.
        for kind in [
            ControlType::Unknown(42),
            ControlType::Stop,
            ControlType::Accept,
            ControlType::Finish,
        ] {
            assert!(matches!(
                hs.on_control(&ctl(kind, None)),
                Err(HandshakeError::UnexpectedControl { got, state: "awaiting READY or START" })
                    if got == kind
            ));
        }
        assert_eq!(
            hs.on_control(&ctl(ControlType::Start, None)),
            Ok(Step::Started)
        );
        assert_eq!(hs.mode(), Some(Mode::Unidirectional));
        for kind in [
            ControlType::Start,
            ControlType::Ready,
            ControlType::Accept,
            ControlType::Finish,
        ] {
            let err = hs.on_control(&ctl(kind, None)).unwrap_err();
            assert_eq!(
                err,
                HandshakeError::UnexpectedControl {
                    got: kind,
                    state: "streaming data frames"
                }
            );
        }
        assert_eq!(
            hs.on_control(&ctl(ControlType::Stop, None)),
            Ok(Step::Finished { reply: None })
        );
        assert_eq!(hs.on_data(), Err(HandshakeError::DataAfterStop));
        assert!(hs.on_control(&ctl(ControlType::Unknown(7), None)).is_err());
        assert!(hs.on_control(&ctl(ControlType::Ready, None)).is_err());
        // A new START after STOP (concatenated files) is fine in unidirectional mode.
        assert_eq!(
            hs.on_control(&ctl(ControlType::Start, Some(DNSTAP_CONTENT_TYPE))),
            Ok(Step::Started)
        );
        assert!(hs.is_streaming());
    }
}
