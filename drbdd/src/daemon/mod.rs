//! The daemon runtime: resources, their state machines, and the threads that drive them.
