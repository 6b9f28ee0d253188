//! lmi-agent library.
