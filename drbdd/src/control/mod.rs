//! The control socket protocol (JSON lines) shared by the daemon and drbdctl.
