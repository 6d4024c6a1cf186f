//! Helpers for the multi-process integration tests: temp nodes, daemons, drbdctl.
