//! Access control of the registry server (issue 14).

pub mod token;
