//! I/O engines for the backing device: O_DIRECT reads/writes, flush, discard via io_uring.
