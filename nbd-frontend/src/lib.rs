//! NBD frontend: a fixed-newstyle NBD server that exports a `BlockTarget`.
