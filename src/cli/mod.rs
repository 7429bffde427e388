//! The command lines of the two binaries, as clap definitions the man pages are generated from.

pub mod volfencectl;
pub mod volfenced;
