//! Authentication, shared with the control plane: see [`prism_auth`].

pub use prism_auth::*;
