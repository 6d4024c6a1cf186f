//! On-disk metadata: superblock, generation identifiers, activity log, per-peer bitmaps.
//!
//! Owns: encoding/decoding and layout. Must never: open files itself (I/O comes in through a trait).
#![forbid(unsafe_code)]
