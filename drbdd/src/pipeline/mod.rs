//! The per-resource request pipeline: frontend request -> activity log -> backing I/O -> completion.
