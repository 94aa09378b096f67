//! freshen-sim: the reference authority served over HTTP, and the campaign
//! that runs the session against it (see the `freshen-sim` binary).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod http;
pub mod tier2;
