//! `MetaDevice` over a file or block device.
